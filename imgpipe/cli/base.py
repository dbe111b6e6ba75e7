"""What every command shares: the app, the one place errors become exit codes, small helpers."""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer

from imgpipe import errors, profiles, render

if TYPE_CHECKING:
    from imgpipe import retry

# Distinct, documented exit codes (README "Exit codes"); 2 is usage, as click uses it.
EXIT_CODES: dict[type[errors.ImgpipeError], int] = {
    errors.ProfileError: 3,
    errors.SourceError: 4,
    errors.UnsafeImageError: 5,
    errors.FormatMismatchError: 6,
    errors.ImageTooLargeError: 7,
    errors.NoSpaceError: 8,
    errors.ConversionError: 9,
    errors.ToolMissingError: 10,
    errors.CloudConfigError: 11,
    errors.AuthError: 12,
    errors.GlanceRefusedError: 13,
    errors.UploadError: 14,
    errors.CatalogError: 15,
    errors.ChecksumError: 16,
    errors.LockedError: 17,
    errors.PartialFailure: 18,
    errors.GuestRefusedError: 19,
    errors.GuestInspectionError: 20,
    errors.BootCheckError: 21,
    errors.ImportFailedError: 22,
}
EXIT_INTERRUPTED = 130

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert one guest image for every hypervisor and publish it to Glance.")


P = ParamSpec("P")
R = TypeVar("R")


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """The only place errors become one-line messages and exit codes (Ctrl-C is 130)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except errors.ImgpipeError as exc:
            code = exit_code(exc)
            # the command's context (typer hands over click's own class, not typer.Context)
            found = (getattr(a, "obj", None) for a in (*args, *kwargs.values()))
            run = next((obj for obj in found if isinstance(obj, Settings)), Settings())
            if run.json and not run.json_emitted:  # a report already out carries the failures
                run.emit_json({"error": str(exc), "exit_code": code, "kind": type(exc).__name__})
            render.err.print(f"imgpipe: error: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            render.err.print("imgpipe: interrupted; nothing half-written was kept", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


@dataclasses.dataclass(kw_only=True)
class Settings:
    """The app-wide options, built once per run by the callback and kept on click's context
    (as twine's settings.py), so no command reads module state."""

    verbose: bool = False
    profile_dirs: list[Path] = dataclasses.field(default_factory=list)
    json: bool = False  # the running command's --json
    json_emitted: bool = False  # a report is out: an error adds no second document

    def profiles(self) -> dict[str, profiles.Profile]:
        return profiles.load_all(self.profile_dirs)

    def emit_json(self, data: object) -> None:
        render.write_json(data)
        self.json_emitted = True


def settings_of(ctx: typer.Context, as_json: bool | None = None) -> Settings:
    """This run's settings, which the callback put on the context; a command hands over its --json."""
    found = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    ctx.obj = found
    if as_json is not None:
        found.json = as_json
    return found


def _size(value: str) -> int:
    """Accept 1099511627776, 1TiB, 1T or 500G."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    if text[-1:].upper() in "KMGTP":
        text += "iB"
    from oslo_utils import strutils  # 60-90 ms of regex compiling: only when a unit is given

    try:
        return int(strutils.string_to_bytes(text, return_int=True))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a size like 500G or 2TiB") from exc


@app.callback()
def main_options(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every external command.")] = False,
    profiles_dir: Annotated[list[Path] | None, typer.Option(
        "--profiles-dir", help=f"Extra profile directory (also ${profiles.ENV_DIRS}); overrides built-ins.")] = None,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("oslo_utils").setLevel(logging.INFO if verbose else logging.ERROR)
    ctx.obj = Settings(verbose=verbose, profile_dirs=list(profiles_dir or []))
    # systemd and Kubernetes stop jobs with SIGTERM: clean up exactly as for Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _limits(retries: int) -> retry.RetryLimits:
    from imgpipe import retry

    return dataclasses.replace(retry.DEFAULT_LIMITS, attempts=retries)


def _fail_if(failures: list[str]) -> None:
    if failures:
        raise errors.PartialFailure(f"{len(failures)} problem(s): " + "; ".join(failures))


def _warn(run: Settings, selected: list[profiles.Profile]) -> None:
    if run.json:
        return
    for p in selected:
        for note in p.advisories():
            render.err.print(f"warning: {p.name}: {note}", highlight=False, soft_wrap=True)


def exit_code(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1

