"""catalog: scheduled refresh of a set of images on several clouds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgpipe import render, settings
from imgpipe.cli.base import App, Settings, _fail_if, app, handled, settings_of
from imgpipe.cli.options import (
    CacertOpt,
    CacheDirOpt,
    InsecureOpt,
    JsonOpt,
    MetricsOpt,
    ReportOpt,
    RetriesOpt,
    ShardOpt,
    TimeoutOpt,
    connection,
)
from imgpipe.units import human_size

if TYPE_CHECKING:
    from imgpipe.catalog import model as catalog_model
    from imgpipe.catalog import plan as catalog
    from imgpipe.catalog import sync
    from imgpipe.catalog.rotation import Action

CatalogArg = Annotated[Path, typer.Argument(metavar="CATALOG", help="Catalog file (YAML).")]
catalog_app = App(help="Keep a catalog of images current on several clouds.")
app.add_typer(catalog_app, name="catalog")


def _catalog(run: Settings, file: Path) -> catalog_model.Catalog:
    from imgpipe.catalog import model as catalog_model

    return catalog_model.load(file, run.profiles())


def _shard(text: str | None) -> catalog.Shard | None:
    from imgpipe.catalog import plan as catalog

    try:
        return catalog.parse_shard(text, os.environ)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from exc


@catalog_app.command("validate")
@handled
def catalog_validate(ctx: typer.Context, file: CatalogArg, as_json: JsonOpt = False) -> None:
    """Check a catalog file without touching any network.

    Keys, profiles, checksums and retention are checked; the count of versions to publish shown."""
    from imgpipe.catalog import plan as catalog

    run = settings_of(ctx, as_json)
    loaded = _catalog(run, file)
    clouds = sorted({c for i in loaded.images for c in i.clouds})
    data = {"catalog": str(file), "valid": True, "images": len(loaded.images),
            "versions_to_publish": len(catalog.units(loaded)), "clouds": clouds}
    if as_json:
        run.emit_json(data)
    else:
        render.out.print(f"ok {file}: {data['images']} images, {data['versions_to_publish']} versions to "
                         f"publish, clouds {', '.join(clouds)}", highlight=False, soft_wrap=True)


@catalog_app.command("plan")
@handled
def catalog_plan(ctx: typer.Context, file: CatalogArg, shard: ShardOpt = None,
                 retries: RetriesOpt = settings.RETRY_ATTEMPTS, timeout: TimeoutOpt = settings.REQUEST_TIMEOUT,
                 insecure: InsecureOpt = False, os_cacert: CacertOpt = None, as_json: JsonOpt = False) -> None:
    """Show what a sync would do, per cloud; change nothing.

    What it would create, leave unchanged, hide, deactivate and delete."""
    from imgpipe.catalog import plan as catalog

    run = settings_of(ctx, as_json)
    connect = connection(None, insecure, os_cacert, retries, timeout)
    actions, failures = catalog.preview(_catalog(run, file), connect.connect, _shard(shard), limits=connect.limits())
    _show_plan(run, file, actions, failures)


def _show_plan(run: Settings, file: Path, actions: list[Action], failures: list[str]) -> None:
    if run.json:
        run.emit_json({"catalog": str(file), "actions": [a.to_dict() for a in actions], "failures": failures})
    else:
        render.table(f"plan {file}", ["cloud", "action", "name", "version", "id"],
                     [(a.cloud, a.action + (f" to {','.join(a.stores)}" if a.stores else ""), a.name, a.version,
                       a.image_id) for a in actions])
    _fail_if(failures)


@catalog_app.command("sync")
@handled
def catalog_sync(
    ctx: typer.Context,
    file: CatalogArg,
    jobs: Annotated[int, typer.Option(
        min=1, metavar="N", help="Source versions processed at once.")] = settings.SYNC_JOBS,
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
    """Publish every missing version to every cloud, then rotate.

    Each missing version is downloaded, verified, converted and published."""
    from imgpipe.catalog import plan as catalog
    from imgpipe.catalog import sync

    run = settings_of(ctx, as_json)
    loaded, where = _catalog(run, file), _shard(shard)
    connect = connection(None, insecure, os_cacert, retries, timeout)
    if dry_run:
        _show_plan(run, file, *catalog.preview(loaded, connect.connect, where, rotate, connect.limits()))
        return
    opts = sync.SyncOptions(cache_dir=cache_dir or sync.default_cache_dir(),
                            profiles=run.profiles(), jobs=jobs, shard=where, rotate=rotate,
                            limits=connect.limits())
    with render.progress(quiet=as_json) as progress:
        result = sync.run(loaded, file, connect.connect, opts, progress=progress)
    _show_sync(run, result, metrics_file, report)


@catalog_app.command("rotate")
@handled
def catalog_rotate(ctx: typer.Context, file: CatalogArg, cache_dir: CacheDirOpt = None, metrics_file: MetricsOpt = None,
                   report: ReportOpt = None, retries: RetriesOpt = settings.RETRY_ATTEMPTS,
                   timeout: TimeoutOpt = settings.REQUEST_TIMEOUT, insecure: InsecureOpt = False,
                   os_cacert: CacertOpt = None, as_json: JsonOpt = False) -> None:
    """Apply retention once, after all shards.

    Only images whose newest version is active on every cloud are rotated."""
    from imgpipe.catalog import sync

    run = settings_of(ctx, as_json)
    connect = connection(None, insecure, os_cacert, retries, timeout)
    opts = sync.SyncOptions(cache_dir=cache_dir or sync.default_cache_dir(),
                            profiles=run.profiles(), limits=connect.limits())
    result = sync.run(_catalog(run, file), file, connect.connect, opts, publish_units=False)
    _show_sync(run, result, metrics_file, report)


def _show_sync(run: Settings, result: sync.SyncReport, metrics_file: Path | None, report: Path | None) -> None:
    from imgpipe.catalog import metrics

    if metrics_file:
        metrics.write(metrics_file, result)
    data = result.to_dict()
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if run.json:
        run.emit_json(data)
    else:
        render.table("images", ["cloud", "status", "name", "version", "id"],
                     [(a.cloud, a.action, a.name, a.version, a.image_id) for a in result.images])
        if result.changes:
            render.table("changes", ["cloud", "action", "name", "version", "id", "error"],
                         [(a.cloud, a.action, a.name, a.version, a.image_id, a.error) for a in result.changes])
        summary = data["summary"]
        render.err.print(f"created {summary['created']}, copied {summary['copied']}, resigned "
                         f"{summary['resigned']}, unchanged "
                         f"{summary['unchanged']}, failed {summary['failed']}, "
                         f"{human_size(result.uploaded_bytes)} uploaded in "
                         f"{result.seconds:.1f} s", highlight=False, soft_wrap=True)
        for note in result.notes:
            render.err.print(f"note: {note}", highlight=False, soft_wrap=True)
    _fail_if(result.failures)
