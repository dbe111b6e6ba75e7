"""The imgpipe command line: parse, call one function, render. Exit codes live here only."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from oslo_utils import strutils

from imgpipe import __version__, errors, profiles, render, settings
from imgpipe.conversion.convert import Options, convert_source, converted_size
from imgpipe.source.inspect import DEFAULT_MAX_VIRTUAL_SIZE, inspect_image

# Cloud and catalog modules load openstacksdk and keystoneauth (~0.3 s): commands that need
# them import them when they run, so convert/inspect/profiles start fast.
if TYPE_CHECKING:
    from imgpipe import retry
    from imgpipe.catalog import plan as catalog
    from imgpipe.catalog import model as catalog_model
    from imgpipe.cloud import clouds
    from imgpipe.catalog import sync
    from imgpipe.cloud.upload import UploadResult

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
            if STATE.json and not render.EMITTED.json:  # a report already out carries the failures
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
    STATE.json = render.EMITTED.json = False
    # systemd and Kubernetes stop jobs with SIGTERM: clean up exactly as for Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
ProfilePropertyOpt = Annotated[Optional[list[str]], typer.Option(
    "--profile-property", help="Property for one profile's image only: PROFILE:k=v (repeatable).")]
TagOpt = Annotated[Optional[list[str]], typer.Option("--tag", help="Image tag (repeatable).")]
VisibilityOpt = Annotated[str, typer.Option(help="private, shared, community or public.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Upload even if an identical image is active.")]
RetriesOpt = Annotated[int, typer.Option("--retries", min=1, help="Attempts per request/upload.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="Seconds without progress before a request is retried.")]
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


def _profile_properties(items: list[str] | None, selected: list[profiles.Profile]) -> dict[str, dict[str, str]]:
    scoped: dict[str, list[str]] = {}
    for item in items or []:
        profile, sep, rest = item.partition(":")
        if not sep or profile not in {p.name for p in selected}:
            raise typer.BadParameter(f"--profile-property {item!r}: expected PROFILE:key=value for a "
                                     "profile given with -p")
        scoped.setdefault(profile, []).append(rest)
    return {profile: _properties(rest) for profile, rest in scoped.items()}


def _connect(names: list[str] | None, insecure: bool, cacert: str | None,
             timeout: float = settings.REQUEST_TIMEOUT) -> list[clouds.Cloud]:
    from imgpipe.cloud import clouds

    return [clouds.connect(n, insecure=insecure, cacert=cacert, timeout=timeout) for n in (names or [None])]


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
    retries: RetriesOpt = settings.RETRY_ATTEMPTS,
    timeout: TimeoutOpt = settings.REQUEST_TIMEOUT,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload an already converted FILE with its profile's properties, verified."""
    STATE.json = as_json
    chosen = profiles.select([profile], profiles.load_all(STATE.profile_dirs))[0]
    _warn([chosen])
    virtual_size = converted_size(file, chosen)
    from imgpipe.hashing import sha256_file
    from imgpipe.cloud.upload import UploadRequest, upload

    targets = _connect(cloud, insecure, os_cacert, timeout)
    limits = _limits(retries)
    sha = sha256_file(file)
    results = []
    with render.progress(quiet=as_json) as report:
        for target in targets:
            req = UploadRequest(file, name, chosen.name, chosen.disk_format, chosen.container_format,
                                virtual_size, sha,
                                {**chosen.properties, **_properties(prop)}, tag or [], visibility, force)
            size = file.stat().st_size
            on_bytes = (lambda sent, t=target.name: report(f"upload {t}/{name}", 100.0 * sent / max(size, 1))) \
                if report else None
            results.append(upload(target, req, limits, on_bytes))
    _show_results(results, [])


@app.command("publish")
@handled
def publish_cmd(
    src: Path,
    profile: ProfileOpt,
    name: Annotated[str, typer.Option(help="Base image name.")],
    name_template: Annotated[str, typer.Option(help="Per-profile name; {name} and {profile}.")] = settings.NAME_TEMPLATE,
    cloud: CloudOpt = None,
    prop: PropertyOpt = None,
    profile_prop: ProfilePropertyOpt = None,
    tag: TagOpt = None,
    visibility: VisibilityOpt = "private",
    force: ForceOpt = False,
    work_dir: Annotated[Optional[Path], typer.Option(help="Where converted files are kept during the run.")] = None,
    engine: Annotated[str, typer.Option(help="streamOptimized writer: auto|native|qemu.")] = "auto",
    verify: Annotated[bool, typer.Option(help="qemu-img compare each output with the source.")] = False,
    retries: RetriesOpt = settings.RETRY_ATTEMPTS,
    timeout: TimeoutOpt = settings.REQUEST_TIMEOUT,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert SRC for each profile and publish every output to every cloud."""
    STATE.json = as_json
    selected = profiles.select(profile, profiles.load_all(STATE.profile_dirs))
    _warn(selected)
    from imgpipe.cloud.publish import PublishRequest, publish

    req = PublishRequest(src, selected, name, name_template, _properties(prop), tag or [], visibility, force,
                         profile_properties=_profile_properties(profile_prop, selected))
    targets = _connect(cloud, insecure, os_cacert, timeout)
    limits = _limits(retries)
    opts = Options(out_dir=work_dir or Path(tempfile.gettempdir()), verify=verify, engine=engine)
    with render.progress(quiet=as_json) as report:
        result = publish(req, targets, opts, limits, report)
    _show_results(result.results, result.failures)


@app.command("doctor")
@handled
def doctor_cmd(cloud: CloudOpt = None, insecure: InsecureOpt = False, os_cacert: CacertOpt = None,
               as_json: JsonOpt = False) -> None:
    """Check qemu-img, the profiles, and that each cloud's Glance answers and what it accepts."""
    STATE.json = as_json
    from imgpipe.cloud import doctor

    checks = doctor.run_checks(cloud or [None], STATE.profile_dirs, insecure, os_cacert)
    if as_json:
        render.emit_json([c.__dict__ for c in checks])
    else:
        render.table("doctor", ["check", "ok", "detail"], [(c.name, "yes" if c.ok else "NO", c.detail) for c in checks])
    failed = [c for c in checks if not c.ok]
    if failed:
        raise errors.CloudConfigError(f"{failed[0].name}: {failed[0].detail}")


# ---- catalog: scheduled refresh of a set of images on several clouds (imgpipe/sync.py) ----
catalog_app = typer.Typer(no_args_is_help=True, help="Keep a catalog of images current on several clouds.")
app.add_typer(catalog_app, name="catalog")
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="I/N: part I (0-based) of N; default $JOB_COMPLETION_INDEX/$JOB_COMPLETIONS.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", envvar="IMGPIPE_CACHE_DIR", help="Downloads, locks, conversions (default ~/.cache/imgpipe).")]
MetricsOpt = Annotated[Optional[Path], typer.Option("--metrics-file", help="Write Prometheus textfile metrics.")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="Also write the JSON report to this file.")]


def _catalog(file: Path) -> catalog_model.Catalog:
    from imgpipe.catalog import model as catalog_model

    return catalog_model.load(file, profiles.load_all(STATE.profile_dirs))


def _shard(text: str | None) -> catalog.Shard | None:
    from imgpipe.catalog import plan as catalog

    try:
        return catalog.parse_shard(text, os.environ)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from exc


def _connector(insecure: bool, cacert: str | None, timeout: float) -> catalog.Connect:
    from imgpipe.cloud import clouds

    return functools.partial(clouds.connect, insecure=insecure, cacert=cacert, timeout=timeout)


def _limits(retries: int) -> retry.RetryLimits:
    from imgpipe import retry

    return dataclasses.replace(retry.DEFAULT_LIMITS, attempts=retries)


@catalog_app.command("validate")
@handled
def catalog_validate(file: Path, as_json: JsonOpt = False) -> None:
    """Check a catalog file (keys, profiles, checksums, retention) without touching any network."""
    from imgpipe.catalog import plan as catalog

    STATE.json = as_json
    loaded = _catalog(file)
    data = {"catalog": str(file), "valid": True, "images": len(loaded.images),
            "versions_to_publish": len(catalog.units(loaded)),
            "clouds": sorted({c for i in loaded.images for c in i.clouds})}
    if as_json:
        render.emit_json(data)
    else:
        render.out.print(f"ok {file}: {data['images']} images, {data['versions_to_publish']} versions to "
                         f"publish, clouds {', '.join(data['clouds'])}", highlight=False, soft_wrap=True)


@catalog_app.command("plan")
@handled
def catalog_plan(file: Path, shard: ShardOpt = None, retries: RetriesOpt = settings.RETRY_ATTEMPTS,
                 timeout: TimeoutOpt = settings.REQUEST_TIMEOUT, insecure: InsecureOpt = False,
                 os_cacert: CacertOpt = None, as_json: JsonOpt = False) -> None:
    """What a sync would create, leave unchanged, hide, deactivate and delete, per cloud; changes nothing."""
    from imgpipe.catalog import plan as catalog

    STATE.json = as_json
    actions, failures = catalog.preview(_catalog(file), _connector(insecure, os_cacert, timeout), _shard(shard),
                                        limits=_limits(retries))
    _show_plan(file, actions, failures)


def _show_plan(file: Path, actions: list[catalog.Action], failures: list[str]) -> None:
    if STATE.json:
        render.emit_json({"catalog": str(file), "actions": [a.to_dict() for a in actions], "failures": failures})
    else:
        render.table(f"plan {file}", ["cloud", "action", "name", "version", "id"],
                     [(a.cloud, a.action, a.name, a.version, a.image_id) for a in actions])
    _fail_if(failures)


@catalog_app.command("sync")
@handled
def catalog_sync(
    file: Path,
    jobs: Annotated[int, typer.Option(min=1, help="Source versions processed at once.")] = settings.SYNC_JOBS,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")] = False,
    shard: ShardOpt = None,
    rotate: Annotated[bool, typer.Option(help="Rotate after publishing (shards never do).")] = True,
    cache_dir: CacheDirOpt = None,
    metrics_file: MetricsOpt = None,
    report: ReportOpt = None,
    retries: RetriesOpt = settings.RETRY_ATTEMPTS,
    timeout: TimeoutOpt = settings.REQUEST_TIMEOUT,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download, verify, convert and publish every missing version to every cloud; then rotate."""
    from imgpipe.catalog import plan as catalog
    from imgpipe.catalog import sync

    STATE.json = as_json
    loaded, where = _catalog(file), _shard(shard)
    connect = _connector(insecure, os_cacert, timeout)
    if dry_run:
        _show_plan(file, *catalog.preview(loaded, connect, where, rotate, _limits(retries)))
        return
    opts = sync.SyncOptions(cache_dir or sync.default_cache_dir(), profiles.load_all(STATE.profile_dirs),
                            jobs, where, rotate, _limits(retries))
    with render.progress(quiet=as_json) as progress:
        result = sync.run(loaded, file, connect, opts, progress=progress)
    _show_sync(result, metrics_file, report)


@catalog_app.command("rotate")
@handled
def catalog_rotate(file: Path, cache_dir: CacheDirOpt = None, metrics_file: MetricsOpt = None,
                   report: ReportOpt = None, retries: RetriesOpt = settings.RETRY_ATTEMPTS,
                   timeout: TimeoutOpt = settings.REQUEST_TIMEOUT, insecure: InsecureOpt = False,
                   os_cacert: CacertOpt = None, as_json: JsonOpt = False) -> None:
    """Apply retention once, after all shards: only images whose newest version is active everywhere."""
    from imgpipe.catalog import sync

    STATE.json = as_json
    opts = sync.SyncOptions(cache_dir or sync.default_cache_dir(), profiles.load_all(STATE.profile_dirs),
                            limits=_limits(retries))
    result = sync.run(_catalog(file), file, _connector(insecure, os_cacert, timeout), opts, publish_units=False)
    _show_sync(result, metrics_file, report)


def _show_sync(result: sync.SyncReport, metrics_file: Path | None, report: Path | None) -> None:
    from imgpipe.catalog import metrics

    if metrics_file:
        metrics.write(metrics_file, result)
    data = result.to_dict()
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if STATE.json:
        render.emit_json(data)
    else:
        render.table("images", ["cloud", "status", "name", "version", "id"],
                     [(a.cloud, a.action, a.name, a.version, a.image_id) for a in result.images])
        if result.changes:
            render.table("changes", ["cloud", "action", "name", "version", "id", "error"],
                         [(a.cloud, a.action, a.name, a.version, a.image_id, a.error) for a in result.changes])
        summary = data["summary"]
        render.err.print(f"created {summary['created']}, unchanged {summary['unchanged']}, failed "
                         f"{summary['failed']}, {render.human_size(result.uploaded_bytes)} uploaded in "
                         f"{result.seconds:.1f} s", highlight=False, soft_wrap=True)
        for note in result.notes:
            render.err.print(f"note: {note}", highlight=False, soft_wrap=True)
    _fail_if(result.failures)


def _fail_if(failures: list[str]) -> None:
    if failures:
        raise errors.PartialFailure(f"{len(failures)} problem(s): " + "; ".join(failures))


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


if __name__ == "__main__":
    app()
