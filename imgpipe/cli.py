"""The imgpipe command line: parse, call one function, render. Exit codes live here only."""

from __future__ import annotations

import functools
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from oslo_utils import strutils

from imgpipe import __version__, clouds, doctor, errors, profiles, render
from imgpipe.convert import Options, convert_source
from imgpipe.hashing import sha256_file
from imgpipe.inspect import DEFAULT_MAX_VIRTUAL_SIZE, inspect_image
from imgpipe.publish import DEFAULT_TEMPLATE, PublishRequest, publish
from imgpipe.upload import UploadRequest, UploadResult, upload

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
}
EXIT_INTERRUPTED = 130

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Convert one guest image for every hypervisor and publish it to Glance.")
profiles_app = typer.Typer(no_args_is_help=True, help="List, show and validate target profiles.")
app.add_typer(profiles_app, name="profiles")


F = TypeVar("F", bound=Callable[..., Any])


def handled(fn: F) -> F:
    """The only place errors become one-line messages and exit codes (Ctrl-C is 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.ImgpipeError as exc:
            code = exit_code(exc)
            if STATE.json:
                render.emit_json({"error": str(exc), "exit_code": code, "kind": type(exc).__name__})
            render.err.print(f"imgpipe: error: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            render.err.print("imgpipe: interrupted; nothing half-written was kept", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


class _State:
    json = False
    profile_dirs: list[Path] = []


STATE = _State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ProfileOpt = Annotated[list[str], typer.Option("--profile", "-p", help="Target profile (repeatable, 'all').")]


def _size(value: str) -> int:
    """Accept 1099511627776, 1TiB, 1T or 500G."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    if text[-1:].upper() in "KMGTP":
        text += "iB"
    try:
        return int(strutils.string_to_bytes(text, return_int=True))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a size like 500G or 2TiB") from exc


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every external command.")] = False,
    profiles_dir: Annotated[Optional[list[Path]], typer.Option(
        "--profiles-dir", help=f"Extra profile directory (also ${profiles.ENV_DIRS}); overrides built-ins.")] = None,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("oslo_utils").setLevel(logging.INFO if verbose else logging.ERROR)
    STATE.profile_dirs = list(profiles_dir or [])


@app.command()
@handled
def version() -> None:
    """Print imgpipe's version."""
    render.out.print(__version__)


@profiles_app.command("list")
@handled
def profiles_list(as_json: JsonOpt = False) -> None:
    """Every known profile with its formats and key properties."""
    STATE.json = as_json
    known = profiles.load_all(STATE.profile_dirs)
    if as_json:
        render.emit_json([p.model_dump(mode="json") | {"source": str(p.source)} for p in known.values()])
        return
    render.table("profiles", ["name", "disk", "container", "hypervisor_type", "description"],
                 [(p.name, p.disk_format, p.container_format, p.properties.get("hypervisor_type", ""),
                   p.description) for p in known.values()])


@profiles_app.command("show")
@handled
def profiles_show(name: str, as_json: JsonOpt = False) -> None:
    """One profile in full, including where it was loaded from."""
    STATE.json = as_json
    profile = profiles.select([name], profiles.load_all(STATE.profile_dirs))[0]
    data = profile.model_dump(mode="json") | {"source": str(profile.source),
                                              "advisories": profile.advisories()}
    if as_json:
        render.emit_json(data)
    else:
        render.out.print_json(data=data)


@profiles_app.command("validate")
@handled
def profiles_validate(paths: Annotated[Optional[list[Path]], typer.Argument()] = None,
                      as_json: JsonOpt = False) -> None:
    """Validate profile files (default: every profile on the search path)."""
    STATE.json = as_json
    if paths:
        loaded = [profiles.load_file(p) for p in paths]
    else:
        loaded = list(profiles.load_all(STATE.profile_dirs).values())
    if as_json:
        render.emit_json([{"name": p.name, "source": str(p.source), "valid": True,
                           "advisories": p.advisories()} for p in loaded])
        return
    for p in loaded:
        render.out.print(f"ok {p.source}", highlight=False)
        for note in p.advisories():
            render.err.print(f"  warning: {note}", highlight=False, soft_wrap=True)


@app.command("inspect")
@handled
def inspect_cmd(
    src: Path,
    source_format: Annotated[Optional[str], typer.Option(help="Fail unless the content is this format.")] = None,
    max_virtual_size: Annotated[str, typer.Option(help="Refuse larger virtual sizes.")] = str(DEFAULT_MAX_VIRTUAL_SIZE),
    as_json: JsonOpt = False,
) -> None:
    """Detect the format from content, sizes, partition table and the safety verdict."""
    STATE.json = as_json
    info = inspect_image(src, source_format, _size(max_virtual_size))
    data = info.to_dict()
    if as_json:
        render.emit_json(data)
        return
    render.table(str(src), ["field", "value"], [
        ("format (qemu driver)", info.format), ("detected", info.detected),
        ("virtual size", f"{render.human_size(info.virtual_size)} ({info.virtual_size})"),
        ("actual size", render.human_size(info.actual_size)),
        ("partition table", info.table or "none"),
        *[(f"partition {p.number}", f"{p.kind} {render.human_size(p.size)} at {p.start}")
          for p in info.partitions],
        ("verdict", "safe: " + "; ".join(info.checks)),
    ])


@app.command()
@handled
def convert(
    src: Path,
    profile: ProfileOpt,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (one distinct output only).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Directory for the outputs.")] = Path("."),
    verify: Annotated[bool, typer.Option(help="qemu-img compare each output with the source.")] = False,
    engine: Annotated[str, typer.Option(help="streamOptimized writer: auto|native|qemu.")] = "auto",
    source_format: Annotated[Optional[str], typer.Option(help="Fail unless the content is this format.")] = None,
    max_virtual_size: Annotated[str, typer.Option(help="Refuse larger virtual sizes.")] = str(DEFAULT_MAX_VIRTUAL_SIZE),
    partition: Annotated[Optional[int], typer.Option(help="Partition number for lxc/uml (default: root).")] = None,
    jobs: Annotated[Optional[int], typer.Option(help="Compression threads for the native writer.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert SRC once per distinct output format of the given profiles."""
    STATE.json = as_json
    if engine not in ("auto", "native", "qemu"):
        raise typer.BadParameter("--engine must be auto, native or qemu")
    selected = profiles.select(profile, profiles.load_all(STATE.profile_dirs))
    _warn(selected)
    opts = Options(out_dir=output_dir, out_file=output, verify=verify, engine=engine,
                   claimed_format=source_format, max_virtual_size=_size(max_virtual_size),
                   partition=partition, jobs=jobs)
    with render.progress(quiet=as_json) as report:
        outputs = convert_source(src, selected, opts, report)
    if as_json:
        render.emit_json([o.to_dict() for o in outputs])
        return
    render.table("outputs", ["file", "profiles", "format", "size", "seconds", "verified"],
                 [(o.path, ",".join(o.profiles), f"{o.disk_format}/{o.container_format}",
                   render.human_size(o.size), f"{o.seconds:.1f}", "yes" if o.verified else "no")
                  for o in outputs])


CloudOpt = Annotated[Optional[list[str]], typer.Option(
    "--cloud", help="Cloud in clouds.yaml (repeatable; default $OS_CLOUD or OS_* variables).")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Do not verify TLS certificates.")]
CacertOpt = Annotated[Optional[str], typer.Option("--os-cacert", help="CA bundle for TLS.")]
PropertyOpt = Annotated[Optional[list[str]], typer.Option("--property", help="Extra property k=v (repeatable).")]
TagOpt = Annotated[Optional[list[str]], typer.Option("--tag", help="Image tag (repeatable).")]
VisibilityOpt = Annotated[str, typer.Option(help="private, shared, community or public.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Upload even if an identical image is active.")]
KEY_PROPERTIES = ("hypervisor_type", "vmware_disktype", "vmware_adaptertype", "hw_machine_type",
                  "vm_mode", "img_type")


def _properties(items: list[str] | None) -> dict[str, str]:
    props = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--property {item!r}: expected key=value")
        props[key] = value
    bad = [k for k in props if k in profiles.RESERVED or k.startswith(profiles.RESERVED_PREFIXES)]
    if bad:
        raise typer.BadParameter(f"--property {bad[0]}: reserved by Glance")
    return props


def _connect(names: list[str] | None, insecure: bool, cacert: str | None) -> list[clouds.Cloud]:
    return [clouds.connect(n, insecure=insecure, cacert=cacert) for n in (names or [None])]


def _show_results(results: list[UploadResult], failures: list[str]) -> None:
    if STATE.json:
        render.emit_json({"images": [r.to_dict() for r in results], "failures": failures})
    else:
        render.table("images", ["cloud", "name", "id", "status", "disk/container", "properties"],
                     [(r.cloud, r.name, r.image_id, r.status, f"{r.disk_format}/{r.container_format}",
                       " ".join(f"{k}={r.properties[k]}" for k in KEY_PROPERTIES if k in r.properties))
                      for r in results])
    if failures:
        raise errors.PartialFailure(f"{len(failures)} of {len(results) + len(failures)} uploads failed: "
                                    + "; ".join(failures))


@app.command("upload")
@handled
def upload_cmd(
    file: Path,
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile the file was made for.")],
    name: Annotated[str, typer.Option(help="Image name in Glance.")],
    cloud: CloudOpt = None,
    prop: PropertyOpt = None,
    tag: TagOpt = None,
    visibility: VisibilityOpt = "private",
    force: ForceOpt = False,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload an already converted FILE with its profile's properties, verified."""
    STATE.json = as_json
    chosen = profiles.select([profile], profiles.load_all(STATE.profile_dirs))[0]
    _warn([chosen])
    info = inspect_image(file) if chosen.package is None else None
    if info is not None and chosen.output is not None and info.format != chosen.output.format:
        raise errors.FormatMismatchError(
            f"{file}: content is {info.format}, profile {chosen.name} uploads {chosen.disk_format}")
    targets = _connect(cloud, insecure, os_cacert)
    sha = sha256_file(file)
    results = []
    with render.progress(quiet=as_json) as report:
        for target in targets:
            req = UploadRequest(file, name, chosen.name, chosen.disk_format, chosen.container_format,
                                info.virtual_size if info else file.stat().st_size, sha,
                                {**chosen.properties, **_properties(prop)}, tag or [], visibility, force)
            size = file.stat().st_size
            on_bytes = (lambda sent, t=target.name: report(f"upload {t}/{name}", 100.0 * sent / max(size, 1))) \
                if report else None
            results.append(upload(target, req, on_bytes=on_bytes))
    _show_results(results, [])


@app.command("publish")
@handled
def publish_cmd(
    src: Path,
    profile: ProfileOpt,
    name: Annotated[str, typer.Option(help="Base image name.")],
    name_template: Annotated[str, typer.Option(help="Per-profile name; {name} and {profile}.")] = DEFAULT_TEMPLATE,
    cloud: CloudOpt = None,
    prop: PropertyOpt = None,
    tag: TagOpt = None,
    visibility: VisibilityOpt = "private",
    force: ForceOpt = False,
    work_dir: Annotated[Optional[Path], typer.Option(help="Where converted files are kept during the run.")] = None,
    engine: Annotated[str, typer.Option(help="streamOptimized writer: auto|native|qemu.")] = "auto",
    verify: Annotated[bool, typer.Option(help="qemu-img compare each output with the source.")] = False,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert SRC for each profile and publish every output to every cloud."""
    STATE.json = as_json
    selected = profiles.select(profile, profiles.load_all(STATE.profile_dirs))
    _warn(selected)
    targets = _connect(cloud, insecure, os_cacert)
    req = PublishRequest(src, selected, name, name_template, _properties(prop), tag or [], visibility, force)
    opts = Options(out_dir=work_dir or Path(tempfile.gettempdir()), verify=verify, engine=engine)
    with render.progress(quiet=as_json) as report:
        result = publish(req, targets, opts, progress=report)
    _show_results(result.results, result.failures)


@app.command("doctor")
@handled
def doctor_cmd(cloud: CloudOpt = None, insecure: InsecureOpt = False, os_cacert: CacertOpt = None,
               as_json: JsonOpt = False) -> None:
    """Check qemu-img, the profiles, and that each cloud's Glance answers and what it accepts."""
    STATE.json = as_json
    checks = doctor.run_checks(cloud or [None], STATE.profile_dirs, insecure, os_cacert)
    if as_json:
        render.emit_json([c.__dict__ for c in checks])
    else:
        render.table("doctor", ["check", "ok", "detail"], [(c.name, "yes" if c.ok else "NO", c.detail) for c in checks])
    failed = [c for c in checks if not c.ok]
    if failed:
        raise errors.CloudConfigError(f"{failed[0].name}: {failed[0].detail}")


def _warn(selected: list[profiles.Profile]) -> None:
    if STATE.json:
        return
    for p in selected:
        for note in p.advisories():
            render.err.print(f"warning: {p.name}: {note}", highlight=False, soft_wrap=True)


def exit_code(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]  # type: ignore[index]
    return 1
