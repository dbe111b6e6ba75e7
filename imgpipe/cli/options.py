"""Option sets shared by several commands, declared once."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated

import typer

from imgpipe.cloud.import_method import ImportMethod, Placement
from imgpipe.settings import DEFAULT_MAX_VIRTUAL_SIZE


class Engine(str, enum.Enum):
    """streamOptimized writer."""

    auto = "auto"
    native = "native"
    qemu = "qemu"


class Visibility(str, enum.Enum):
    private = "private"
    shared = "shared"
    community = "community"
    public = "public"


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ProfileOpt = Annotated[list[str], typer.Option("--profile", "-p", help="Target profile (repeatable, 'all').")]
SourceFormatOpt = Annotated[str | None, typer.Option(help="Fail unless the content is this format.")]
MaxVirtualSizeOpt = Annotated[str, typer.Option(help="Refuse larger virtual sizes.")]
MAX_VIRTUAL_SIZE = str(DEFAULT_MAX_VIRTUAL_SIZE)
EngineOpt = Annotated[Engine, typer.Option(help="streamOptimized writer.")]
VerifyOpt = Annotated[bool, typer.Option(help="qemu-img compare each output with the source.")]
CloudOpt = Annotated[list[str] | None, typer.Option(
    "--cloud", help="Cloud in clouds.yaml (repeatable; default $OS_CLOUD or OS_* variables).")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Do not verify TLS certificates.")]
CacertOpt = Annotated[str | None, typer.Option("--os-cacert", help="CA bundle for TLS.")]
PropertyOpt = Annotated[list[str] | None, typer.Option("--property", help="Extra property k=v (repeatable).")]
ProfilePropertyOpt = Annotated[list[str] | None, typer.Option(
    "--profile-property", help="Property for one profile's image only: PROFILE:k=v (repeatable).")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Image tag (repeatable).")]
VisibilityOpt = Annotated[Visibility, typer.Option(help="Image visibility.")]
ImportMethodOpt = Annotated[ImportMethod, typer.Option(
    help="auto: PUT, or glance-direct import when stores are asked for or the cloud forbids PUT.")]
StoreOpt = Annotated[list[str] | None, typer.Option(
    "--store", help="Glance store to import into (repeatable); an identical image missing one is "
                    "completed with copy-image.")]
AllStoresOpt = Annotated[bool, typer.Option("--all-stores", help="Import into every store of the cloud.")]
AllowPartialStoresOpt = Annotated[bool, typer.Option(
    "--allow-partial-stores", help="Keep the image if some stores fail (all_stores_must_succeed false); "
                                   "default: any failing store fails the upload and the image is deleted.")]


def placement(method: ImportMethod, stores: list[str] | None, all_stores: bool, allow_partial: bool) -> Placement:
    if stores and all_stores:
        raise typer.BadParameter("--store and --all-stores exclude each other")
    return Placement(method, tuple(stores or ()), all_stores, allow_partial)


ForceOpt = Annotated[bool, typer.Option("--force", help="Upload even if an identical image is active.")]
RetriesOpt = Annotated[int, typer.Option("--retries", min=1, help="Attempts per request/upload.")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1, help="Seconds without progress before a request is retried.")]
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", help="I/N: part I (0-based) of N; default $JOB_COMPLETION_INDEX/$JOB_COMPLETIONS.")]
CacheDirOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", envvar="IMGPIPE_CACHE_DIR", help="Downloads, locks, conversions (default ~/.cache/imgpipe).")]
MetricsOpt = Annotated[Path | None, typer.Option("--metrics-file", help="Write Prometheus textfile metrics.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Also write the JSON report to this file.")]
ForceBootOpt = Annotated[bool, typer.Option("--force-boot", help="Convert/publish even where the guest "
                                            "looks unbootable for a profile (exit 19 otherwise).")]
GuestPropertiesOpt = Annotated[bool, typer.Option("--guest-properties/--no-guest-properties", help=
                                                  "Derive boot properties from the guest (architecture, os_*, ...).")]


def regex(value: str) -> str:
    """Option callback: a bad --expect is a usage error (exit 2), not a traceback mid-boot."""
    try:
        re.compile(value)
    except re.error as exc:
        raise typer.BadParameter(f"{value!r} is not a regular expression: {exc}") from exc
    return value
