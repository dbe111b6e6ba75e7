"""Commands that work on local files: profiles, inspect, convert."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgpipe import __version__, profiles, render
from imgpipe.cli.base import _size, _warn, app, handled, settings_of
from imgpipe.cli.options import (
    MAX_VIRTUAL_SIZE,
    Engine,
    EngineOpt,
    ForceBootOpt,
    JsonOpt,
    MaxVirtualSizeOpt,
    ProfileOpt,
    SourceFormatOpt,
    VerifyOpt,
)

if TYPE_CHECKING:
    from imgpipe.guest.facts import GuestFacts

profiles_app = typer.Typer(no_args_is_help=True, help="List, show and validate target profiles.")
app.add_typer(profiles_app, name="profiles")


@app.command()
@handled
def version() -> None:
    """Print imgpipe's version."""
    render.out.print(__version__)


@profiles_app.command("list")
@handled
def profiles_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every known profile with its formats and key properties."""
    run = settings_of(ctx, as_json)
    known = run.profiles()
    if as_json:
        run.emit_json([p.model_dump(mode="json") | {"source": str(p.source)} for p in known.values()])
        return
    render.table("profiles", ["name", "disk", "container", "hypervisor_type", "description"],
                 [(p.name, p.disk_format, p.container_format, p.properties.get("hypervisor_type", ""),
                   p.description) for p in known.values()])


@profiles_app.command("show")
@handled
def profiles_show(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """One profile in full, including where it was loaded from."""
    run = settings_of(ctx, as_json)
    profile = profiles.select([name], run.profiles())[0]
    data = profile.model_dump(mode="json") | {"source": str(profile.source),
                                              "advisories": profile.advisories()}
    if as_json:
        run.emit_json(data)
    else:
        render.out.print_json(data=data)


@profiles_app.command("validate")
@handled
def profiles_validate(ctx: typer.Context, paths: Annotated[list[Path] | None, typer.Argument()] = None,
                      as_json: JsonOpt = False) -> None:
    """Validate profile files (default: every profile on the search path)."""
    run = settings_of(ctx, as_json)
    loaded = [profiles.load_file(p) for p in paths] if paths else list(run.profiles().values())
    if as_json:
        run.emit_json([{"name": p.name, "source": str(p.source), "valid": True,
                           "advisories": p.advisories()} for p in loaded])
        return
    for p in loaded:
        render.out.print(f"ok {p.source}", highlight=False)
        for note in p.advisories():
            render.err.print(f"  warning: {note}", highlight=False, soft_wrap=True)


@app.command("inspect")
@handled
def inspect_cmd(
    ctx: typer.Context,
    src: Path,
    source_format: SourceFormatOpt = None,
    max_virtual_size: MaxVirtualSizeOpt = MAX_VIRTUAL_SIZE,
    as_json: JsonOpt = False,
) -> None:
    """Detect the format from content, sizes, partition table and the safety verdict."""
    run = settings_of(ctx, as_json)
    from imgpipe.pipeline.inspect import inspect_source
    from imgpipe.pipeline.prepared import Preparation

    how = Preparation(work_dir=Path(tempfile.gettempdir()), claimed_format=source_format,
                      max_virtual_size=_size(max_virtual_size))
    prepared, data = inspect_source(src, how, run.profiles())
    info, facts = prepared.info, prepared.facts
    assert info is not None and facts is not None
    if as_json:
        run.emit_json(data)
        return
    render.table(str(src), ["field", "value"], [
        ("format (qemu driver)", info.format), ("detected", info.detected),
        ("virtual size", f"{render.human_size(info.virtual_size)} ({info.virtual_size})"),
        ("actual size", render.human_size(info.actual_size)),
        ("partition table", info.table or "none"),
        *[(f"partition {p.number}", f"{p.kind} {render.human_size(p.size)} at {p.start}")
          for p in info.partitions],
        ("verdict", "safe: " + "; ".join(info.checks)),
        *_guest_rows(facts),
        *_derived_rows(data["derived_properties"]),
    ])


def _guest_rows(facts: GuestFacts) -> list[tuple[str, str]]:
    """One row per guest fact: the value, then where it was read. Facts not found for this
    family (a Windows guest has no os-release) are left out, not shown as missing."""
    rows = [("boot paths", ", ".join(facts.to_dict()["boot_paths"]) or "none")]
    rows += [("uefi loader", f"{f.value['path']} ({f.value['architecture']}, from {f.evidence})")
             for f in facts.uefi_loaders]
    ci = facts.cloud_init
    windows = facts.windows is not None
    shown = (("bios boot", facts.bios, True), ("architecture", facts.architecture, True),
             ("root filesystem", facts.root, not windows), ("separate /boot", facts.boot, False),
             ("os-release", facts.os_release, not windows), ("os type", facts.os_type, True),
             ("windows version", facts.windows, False), ("init", facts.init, not windows),
             ("guest agent", facts.guest_agent, not windows), ("kernel", facts.kernel, False),
             ("storage drivers", facts.drivers, not windows), ("windows drivers", facts.windows_drivers, False),
             ("cloud-init", ci.installed if ci else None, not windows),
             ("cloud-init version", ci.version if ci else None, False),
             ("cloud-init datasource_list", ci.datasource_list if ci and ci.installed else None, False),
             ("cloud-init disabled", ci.disabled if ci else None, False),
             ("cloud-init default user", ci.default_user if ci else None, False),
             ("cloudbase-init", facts.cloudbase_init, windows))
    for label, fact, always in shown:
        if fact is None and not always:
            continue
        value = fact.value if fact else None
        if isinstance(value, dict):
            value = (", ".join(value) or "none of the known ones") if label.endswith("drivers") \
                else " ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        elif value is None and fact is not None and label == "cloud-init datasource_list":
            value = "not set (cloud-init's built-in list)"
        rows.append((label, f"{value} (from {fact.evidence})" if fact else "not found"))
    rows += [("cloud-init note", note) for note in (ci.notes + ci.unread if ci else [])]
    rows += [("not checked", note) for note in facts.unchecked]
    return rows


def _derived_rows(derived: dict[str, dict[str, dict[str, str]]]) -> list[tuple[str, str]]:
    """Per profile, each derived property with its evidence."""
    return [(f"derived for {name}", f"{key}={d['value']} ({d['evidence']})")
            for name, props in derived.items() for key, d in props.items()]


@app.command()
@handled
def convert(
    ctx: typer.Context,
    src: Path,
    profile: ProfileOpt,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output file (one distinct output only).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Directory for the outputs.")] = Path("."),
    verify: VerifyOpt = False,
    engine: EngineOpt = Engine.auto,
    source_format: SourceFormatOpt = None,
    max_virtual_size: MaxVirtualSizeOpt = MAX_VIRTUAL_SIZE,
    partition: Annotated[int | None, typer.Option(help="Partition number for lxc/uml (default: root).")] = None,
    jobs: Annotated[int | None, typer.Option(help="Compression threads for the native writer.")] = None,
    force_boot: ForceBootOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert SRC once per distinct output format of the given profiles."""
    run = settings_of(ctx, as_json)
    selected = profiles.select(profile, run.profiles())
    _warn(run, selected)
    from imgpipe.conversion.convert import Options  # the conversion machinery: only when converting
    from imgpipe.pipeline.convert import convert_source

    opts = Options(out_dir=output_dir, out_file=output, verify=verify, engine=engine.value,
                   claimed_format=source_format, max_virtual_size=_size(max_virtual_size),
                   partition=partition, jobs=jobs, force_boot=force_boot)
    with render.progress(quiet=as_json) as report:
        outputs = convert_source(src, selected, opts, report)
    if as_json:
        run.emit_json([o.to_dict() for o in outputs])
        return
    render.table("outputs", ["file", "profiles", "format", "engine", "size", "seconds", "verified"],
                 [(o.path, ",".join(o.profiles), f"{o.disk_format}/{o.container_format}", o.engine,
                   render.human_size(o.size), f"{o.seconds:.1f}", "yes" if o.verified else "no")
                  for o in outputs])
