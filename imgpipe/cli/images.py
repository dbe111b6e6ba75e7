"""Commands that work on local files: profiles, inspect, convert."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgpipe import __version__, profiles, render
from imgpipe.cli.base import App, _warn, app, handled, settings_of
from imgpipe.cli.options import (
    MAX_VIRTUAL_SIZE,
    Engine,
    EngineOpt,
    ForceBootOpt,
    JobsOpt,
    JsonOpt,
    MaxVirtualSizeOpt,
    PartitionOpt,
    ProfileOpt,
    SourceFormatOpt,
    SrcArg,
    VerifyOpt,
)
from imgpipe.units import human_size

profiles_app = App(help="List, show and validate target profiles.")
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
def profiles_show(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="PROFILE", help="Profile name.")],
                  as_json: JsonOpt = False) -> None:
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
def profiles_validate(ctx: typer.Context, paths: Annotated[list[Path] | None, typer.Argument(
                          metavar="FILE", help="Profile files (default: every profile on the search path).")] = None,
                      as_json: JsonOpt = False) -> None:
    """Validate profile files.

    Without FILE, every profile on the search path is validated."""
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
    src: SrcArg,
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", "-p", metavar="PROFILE", help="Derive properties only for these profiles (repeatable).")] = None,
    source_format: SourceFormatOpt = None,
    max_virtual_size: MaxVirtualSizeOpt = MAX_VIRTUAL_SIZE,
    evidence: Annotated[bool, typer.Option(
        "--evidence", help="Show where each guest fact and derived property was read (--json always does).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what SRC is and what its guest holds.

    The image: format, sizes, partitions and the safety verdict. The guest: boot paths,
    architecture, root filesystem, OS, init, guest agent, kernel, storage drivers, cloud-init.
    Then the properties each profile would derive from it, what all share shown once."""
    run = settings_of(ctx, as_json)
    known = run.profiles()
    chosen = {p.name: p for p in profiles.select(profile, known)} if profile else known
    from imgpipe.pipeline.inspect import inspect_source
    from imgpipe.pipeline.prepared import Preparation

    how = Preparation(claimed_format=source_format, max_virtual_size=max_virtual_size)
    prepared, data = inspect_source(src, how, chosen)
    assert prepared.info is not None and prepared.facts is not None
    if as_json:
        run.emit_json(data)
        return
    from imgpipe.cli import inspect_view  # rich tables: only when printing for people

    inspect_view.show(src, prepared.info, prepared.facts, data["derived_properties"], evidence)


@app.command()
@handled
def convert(
    ctx: typer.Context,
    src: SrcArg,
    profile: ProfileOpt,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", dir_okay=False, help="Output file (one distinct output only).")] = None,
    output_dir: Annotated[Path, typer.Option(
        metavar="DIR", exists=True, file_okay=False, help="Directory for the outputs.")] = Path("."),
    verify: VerifyOpt = False,
    engine: EngineOpt = Engine.auto,
    source_format: SourceFormatOpt = None,
    max_virtual_size: MaxVirtualSizeOpt = MAX_VIRTUAL_SIZE,
    partition: PartitionOpt = None,
    jobs: JobsOpt = None,
    force_boot: ForceBootOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert SRC once per distinct output format of the profiles."""
    run = settings_of(ctx, as_json)
    selected = profiles.select(profile, run.profiles())
    from imgpipe.conversion.convert import Options  # the conversion machinery: only when converting
    from imgpipe.pipeline.convert import check_outputs, convert_source
    from imgpipe.pipeline.prepared import Preparation

    how = Preparation(claimed_format=source_format, max_virtual_size=max_virtual_size, force_boot=force_boot)
    opts = Options(out_dir=output_dir, out_file=output, verify=verify, engine=engine.value, partition=partition,
                   jobs=jobs)
    check_outputs(src, selected, opts)
    _warn(run, selected)
    with render.progress(quiet=as_json) as report:
        outputs = convert_source(src, selected, opts, report, how=how)
    if as_json:
        run.emit_json([o.to_dict() for o in outputs])
        return
    render.table("outputs", ["file", "profiles", "format", "engine", "size", "seconds", "verified"],
                 [(o.path, ",".join(o.profiles), f"{o.disk_format}/{o.container_format}", o.engine,
                   human_size(o.size), f"{o.seconds:.1f}", "yes" if o.verified else "no")
                  for o in outputs])
