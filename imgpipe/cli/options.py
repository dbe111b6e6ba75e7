"""Options shared by several commands, each declared once: its flag, metavar, help and default."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated

import typer

from imgpipe import settings
from imgpipe.cloud.connection import ConnectOptions
from imgpipe.cloud.import_method import ImportMethod, Placement
from imgpipe.units import parse_size, size_arg


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


class Size(int):
    """A byte count that --help shows as it is typed (1T, not 1099511627776)."""

    def __str__(self) -> str:
        return size_arg(self)


def size(value: str | int) -> Size:
    """Option parser: 512M, 20G, 1T (binary units, as qemu-img reads them) or bytes."""
    if isinstance(value, int):
        return Size(value)
    try:
        return Size(parse_size(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


MAX_VIRTUAL_SIZE = Size(settings.DEFAULT_MAX_VIRTUAL_SIZE)


def regex(value: str) -> str:
    """Option callback: a bad --expect is a usage error (exit 2), not a traceback mid-boot."""
    try:
        re.compile(value)
    except re.error as exc:
        raise typer.BadParameter(f"{value!r} is not a regular expression: {exc}") from exc
    return value


SrcArg = Annotated[Path, typer.Argument(
    metavar="SRC", help="Guest disk image: qcow2, raw, vmdk, vhd(x), vdi, OVA; may be gzip, xz, zstd or bzip2 "
                        "compressed.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ProfileOpt = Annotated[list[str], typer.Option(
    "--profile", "-p", metavar="PROFILE",
    help="Target profile (repeatable; 'all' for every disk-image one but kvm-secureboot).")]
OneProfileOpt = Annotated[str, typer.Option(
    "--profile", "-p", metavar="PROFILE", help="Profile the file was made for.")]

# What the source may be (pipeline.prepared.Preparation): inspect, convert and publish take these.
SourceFormatOpt = Annotated[str | None, typer.Option(
    metavar="FORMAT", help="Fail unless the content is this format (qcow2, raw, vmdk, vhd, vhdx, vdi, ...).")]
MaxVirtualSizeOpt = Annotated[int, typer.Option(
    parser=size, metavar="SIZE", help="Refuse larger virtual sizes (e.g. 512G, 2T).")]
ForceBootOpt = Annotated[bool, typer.Option("--force-boot", help="Convert/publish even where the guest "
                                            "looks unbootable for a profile (exit 19 otherwise).")]
GuestPropertiesOpt = Annotated[bool, typer.Option(
    "--guest-properties/--no-guest-properties",
    help="Derive boot properties from the guest (architecture, os_*, ...).")]

# How to convert (conversion.convert.Options): convert and publish take these.
EngineOpt = Annotated[Engine, typer.Option(help="streamOptimized writer.")]
VerifyOpt = Annotated[bool, typer.Option("--verify", help="qemu-img compare each output with the source.")]
PartitionOpt = Annotated[int | None, typer.Option(
    min=1, metavar="N", help="Partition number lxc and uml extract (default: the root inspection finds).")]
JobsOpt = Annotated[int | None, typer.Option(
    min=1, metavar="N", help="Compression threads for the native writer (default: one per core).")]

# How to reach clouds (cloud.connection.ConnectOptions): every command that talks to one.
CloudOpt = Annotated[list[str] | None, typer.Option(
    "--cloud", metavar="CLOUD", help="Cloud in clouds.yaml (repeatable; default $OS_CLOUD or OS_* variables).")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Do not verify TLS certificates.")]
CacertOpt = Annotated[str | None, typer.Option("--os-cacert", metavar="FILE", help="CA bundle for TLS.")]
RetriesOpt = Annotated[int, typer.Option("--retries", min=1, metavar="N", help="Attempts per request/upload.")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1, metavar="SECONDS", help="Seconds without progress before a request is retried.")]


def connection(cloud: list[str] | None, insecure: bool, cacert: str | None, retries: int,
               timeout: float) -> ConnectOptions:
    return ConnectOptions(clouds=tuple(cloud or ()), insecure=insecure, cacert=cacert, retries=retries,
                          timeout=timeout)


# What an image carries and where it goes: upload and publish.
PropertyOpt = Annotated[list[str] | None, typer.Option(
    "--property", metavar="KEY=VALUE", help="Extra image property (repeatable).")]
ProfilePropertyOpt = Annotated[list[str] | None, typer.Option(
    "--profile-property", metavar="PROFILE:KEY=VALUE", help="Property for one profile's image only (repeatable).")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", metavar="TAG", help="Image tag (repeatable).")]
VisibilityOpt = Annotated[Visibility, typer.Option(help="Image visibility.")]
ImportMethodOpt = Annotated[ImportMethod, typer.Option(
    help="auto: PUT, or glance-direct import when stores are asked for or the cloud forbids PUT.")]
StoreOpt = Annotated[list[str] | None, typer.Option(
    "--store", metavar="STORE", help="Glance store to import into (repeatable); an identical image missing one "
                                     "is completed with copy-image.")]
AllStoresOpt = Annotated[bool, typer.Option("--all-stores", help="Import into every store of the cloud.")]
AllowPartialStoresOpt = Annotated[bool, typer.Option(
    "--allow-partial-stores", help="Keep the image if some stores fail (all_stores_must_succeed false); "
                                   "default: any failing store fails the upload and the image is deleted.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Upload even if an identical image is active.")]


def placement(method: ImportMethod, stores: list[str] | None, all_stores: bool, allow_partial: bool) -> Placement:
    if stores and all_stores:
        raise typer.BadParameter("--store and --all-stores exclude each other")
    return Placement(method, tuple(stores or ()), all_stores, allow_partial)


# Catalog runs.
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", metavar="I/N", help="Part I (0-based) of N; default $JOB_COMPLETION_INDEX/$JOB_COMPLETIONS.")]
CacheDirOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", envvar="IMGPIPE_CACHE_DIR", metavar="DIR",
    help="Downloads, locks, conversions (default ~/.cache/imgpipe).")]
MetricsOpt = Annotated[Path | None, typer.Option(
    "--metrics-file", metavar="FILE", help="Write Prometheus textfile metrics.")]
ReportOpt = Annotated[Path | None, typer.Option(
    "--report", metavar="FILE", help="Also write the JSON report to this file.")]
