"""What every command shares: the app, the one place errors become exit codes, small helpers."""

from __future__ import annotations

import atexit
import dataclasses
import errno
import functools
import gc
import logging
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from typer.core import TyperCommand

from imgpipe import errors, profiles, render
from imgpipe.guest.fs.budget import Budget

if TYPE_CHECKING:  # typer carries its own click (typer._click) since 0.29
    from typer._click.core import Context, Parameter
    from typer._click.formatting import HelpFormatter
    from typer.models import CommandFunctionType

# Distinct, documented exit codes (README "Exit codes"); 2 is usage, as click uses it.
EXIT_CODES: dict[type[errors.ImgpipeError], int] = {
    errors.SettingError: 2,
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
    errors.SigningError: 23,
    errors.KeyManagerError: 24,
    errors.SignatureInvalidError: 25,
    errors.OutputPathError: 26,
    errors.LocalIOError: 27,
}
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM (systemd, Kubernetes, CI cancelling a job): 128 + SIGTERM

P = ParamSpec("P")
R = TypeVar("R")


class Command(TyperCommand):
    """Help as people expect it: SRC in the usage line and arguments listed with their help,
    no type names (each option's metavar says what it takes)."""

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_argument_name(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        params = self.get_params(ctx)
        arguments = [(_argument_name(p), getattr(p, "help", None) or "") for p in params
                     if p.param_type_name == "argument"]
        options = [r for p in params if p.param_type_name == "option" and (r := p.get_help_record(ctx))]
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(_unbroken(rows, formatter.width))


def _unbroken(rows: list[tuple[str, str]], width: int) -> list[tuple[str, str]]:
    """Help text wrapped at spaces only: click's wrapper would split `guest-properties` or
    `copy-image` at the hyphen. A leading \\b line tells click to keep the lines as they are;
    the width is the one write_dl gives the second column (col_max 30, spacing 2)."""
    first_col = min(max(len(first) for first, _ in rows), 30) + 2
    text_width = max(width - first_col - 2, 10)
    return [(first, "\b\n" + "\n".join(textwrap.wrap(text, text_width, break_on_hyphens=False,
                                                       break_long_words=False)) if text else text)
            for first, text in rows]


def _argument_name(param: Parameter) -> str:
    name = param.metavar or (param.name or "").upper()
    return f"{name}..." if param.nargs != 1 else name


class App(typer.Typer):
    """Every command gets imgpipe's help format; plain (not boxed) help reads the same in a
    terminal, a pager and a CI log, and never wraps a choice or a flag mid-word."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(rich_markup_mode=None, no_args_is_help=True, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = App(pretty_exceptions_enable=False,
          help="Convert one guest image for every hypervisor and publish it to Glance.")

# The interpreter's last collections at exit walk every object the client libraries, models
# and profiles left: 0.3-0.9 s of every cloud command's end on a loaded machine. Frozen, they
# are not walked (the process is ending; atexit hooks and finalizers still run).
atexit.register(gc.freeze)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """The only place errors become one-line messages and exit codes (Ctrl-C is 130, SIGTERM
    143); an OSError that no stage turned into an ImgpipeError gets its own code, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (errors.ImgpipeError, OSError) as caught:
            exc = caught if isinstance(caught, errors.ImgpipeError) else from_os_error(caught)
            code = exit_code(exc)
            # the command's context (typer hands over click's own class, not typer.Context)
            found = (getattr(a, "obj", None) for a in (*args, *kwargs.values()))
            run = next((obj for obj in found if isinstance(obj, Settings)), Settings())
            if run.json and not run.json_emitted:  # a report already out carries the failures
                run.emit_json({"error": str(exc), "exit_code": code, "kind": type(exc).__name__})
            render.err.print(f"imgpipe: error: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
        except KeyboardInterrupt as exc:
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            render.err.print(f"imgpipe: {what}; nothing half-written was kept", highlight=False)
            raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED) from None

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
    """This run's settings, which the callback put on the context; a command hands over its --json.

    Every command starts here, so the environment's settings are checked here, before any work:
    a bad IMGPIPE_INSPECT_* value is a usage error (exit 2), not a guest over its budget (20)."""
    found = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    ctx.obj = found
    if as_json is not None:
        found.json = as_json
    Budget.from_env()
    return found


class _Messages(logging.Formatter):
    """warning: guest-2g.qcow2: ... as imgpipe's own messages read; no logger names."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


@app.callback()
def main_options(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every external command.")] = False,
    profiles_dir: Annotated[list[Path] | None, typer.Option(
        "--profiles-dir", metavar="DIR",
        help=f"Extra profile directory (also ${profiles.ENV_DIRS}); overrides built-ins.")] = None,
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Messages())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    # Libraries that parse untrusted bytes log their own complaints (format_inspector an ERROR for a
    # vmdk imgpipe then refuses in one line, regipy a WARNING for a value it shows as hex): --verbose only.
    for library in ("oslo_utils", "regipy"):
        logging.getLogger(library).setLevel(logging.INFO if verbose else logging.CRITICAL)
    ctx.obj = Settings(verbose=verbose, profile_dirs=list(profiles_dir or []))
    # systemd and Kubernetes stop jobs with SIGTERM: clean up exactly as for Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)


class Terminated(KeyboardInterrupt):
    """SIGTERM: every clean-up Ctrl-C runs, then exit 143 instead of 130."""


def _interrupt(signum: int, frame: object) -> None:
    raise Terminated


def from_os_error(exc: OSError) -> errors.ImgpipeError:
    """One line naming the file and what the system said; a full disk is NoSpaceError."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    what = exc.strerror or str(exc) or type(exc).__name__
    message = f"{' -> '.join(names)}: {what}" if names else what
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.NoSpaceError(message)
    return errors.LocalIOError(message)


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

