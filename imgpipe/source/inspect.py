"""Decide what a source image really is, and whether it is safe to hand to qemu-img.

Images are untrusted: the format comes from content (oslo.utils' format_inspector, the same
checks Glance and nova run), and qemu-img only ever opens a file after those checks pass,
with an explicit -f and under CPU/memory limits.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from imgpipe import nbd, qemu
from imgpipe.errors import (
    FormatMismatchError,
    ImageTooLargeError,
    SourceError,
    UnsafeImageError,
)
from imgpipe.runner import CommandFailed
from imgpipe.settings import DEFAULT_MAX_VIRTUAL_SIZE
from imgpipe.source import partitions
from imgpipe.source.decompress import CODECS
from imgpipe.source.partitions import Partition
from imgpipe.units import human_size

if TYPE_CHECKING:
    from oslo_utils.imageutils import format_inspector

__all__ = ["DEFAULT_MAX_VIRTUAL_SIZE", "ImageInfo", "OpenImage", "detect_format", "inspect_image", "open_source",
           "opened"]

# format_inspector name -> qemu-img driver name, for the formats imgpipe accepts as sources.
QEMU_DRIVER = {"raw": "raw", "gpt": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc",
               "vhdx": "vhdx", "vdi": "vdi"}
# Names users may pass as --source-format, mapped to the same driver names.
CLAIM_ALIASES = {"vpc": "vpc", "vhd": "vpc", "img": "raw", **QEMU_DRIVER}
CHECKABLE = {"qcow2", "vmdk", "vhdx", "vdi"}
ARCHIVE_MAGIC = [
    # convert and publish unpack compressed files and OVAs (source/unpack.py) before inspecting
    *[(0, c.magic, f"{'an' if c.name == 'xz' else 'a'} {c.name}-compressed file (convert and publish decompress it)")
      for c in CODECS],
    (0, b"PK\x03\x04", "a zip archive; extract the disk image first"),
    (257, b"ustar", "a tar archive (only OVA sources and the docker profile take one)"),
]


@dataclass
class ImageInfo:
    path: Path
    format: str
    detected: str
    virtual_size: int
    actual_size: int
    table: str | None = None
    partitions: list[Partition] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    # qemu-img info's format-specific data: what passthrough decides on.
    format_specific: dict[str, Any] = field(default_factory=dict)
    # The guest-visible first HEAD_BYTES: the partition table here, the boot code for guest inspection.
    head: bytes = field(default=b"", repr=False)

    def source(self) -> qemu.Source:
        return qemu.Source(self.path, self.format)

    def window(self, part: Partition | None) -> qemu.Source:
        """One partition's bytes (None: the whole disk holds one filesystem)."""
        return self.source() if part is None else qemu.Source(self.path, self.format, part.start, part.size)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["head"]
        data["path"] = str(self.path)
        data["safe"] = True
        return data


def archive_kind(path: Path) -> str | None:
    """Describe path if it is a compressed file or archive rather than a disk image."""
    with path.open("rb") as f:
        head = f.read(512)
    for offset, magic, what in ARCHIVE_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return what
    return None


def open_source(path: Path) -> None:
    """Fail with a clear message when the source cannot be read at all."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: permission denied")


@dataclass
class OpenImage:
    """A source past the checks that decide whether qemu may open it, served for reading:
    `disk` reads the guest-visible bytes (qemu stays the reader of the container)."""

    info: ImageInfo
    disk: nbd.Export


@contextlib.contextmanager
def opened(path: Path, claimed: str | None = None, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
           admitted: Callable[[ImageInfo], None] | None = None) -> Iterator[OpenImage]:
    """The source checked and served for the block's duration, its partition table read.

    format_inspector and `qemu-img info` come first: they decide whether qemu may open the file
    at all (backing files, external extents, size); admitted(info) is called right then (no
    partition table yet). `qemu-img check` walks all the metadata and takes longest: it runs
    beside the reads, and its verdict is joined when the block ends, winning over any error the
    corruption caused inside it."""
    info = _first_checks(path, claimed, max_virtual_size)
    if admitted is not None:
        admitted(info)
    with _checked_beside(info), contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(nbd.export(info.source(), str(path)))
            _read_partitions(info, disk)
        except nbd.NbdError as exc:
            raise UnsafeImageError(f"{path}: cannot read the partition table: {exc}") from exc
        yield OpenImage(info, disk)


def inspect_image(
    path: Path,
    claimed: str | None = None,
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
) -> ImageInfo:
    """Run every safety check, cheapest and least exposed first; raise on the first failure."""
    with opened(path, claimed, max_virtual_size) as image:
        return image.info


def _first_checks(path: Path, claimed: str | None, max_virtual_size: int) -> ImageInfo:
    open_source(path)
    what = archive_kind(path)
    if what:
        raise UnsafeImageError(f"{path}: not a disk image: {what}")
    detected = _detect(path)
    driver = QEMU_DRIVER.get(detected)
    if driver is None:
        raise UnsafeImageError(f"{path}: {detected} images are not accepted as a source")
    if claimed is not None:
        wanted = CLAIM_ALIASES.get(claimed.lower())
        if wanted != driver:
            raise FormatMismatchError(f"{path}: claimed format {claimed} but the content is {detected}")
    size = path.stat().st_size
    if driver == "raw" and (size == 0 or size % partitions.SECTOR):
        raise UnsafeImageError(
            f"{path}: not a disk image: {size} bytes is not a whole number of 512-byte sectors")
    try:
        data = qemu.info(path, driver)
    except CommandFailed as exc:
        raise UnsafeImageError(f"{path}: qemu-img cannot read it as {driver}: {exc}") from exc
    _check_qemu_info(path, driver, data)
    info = ImageInfo(path, driver, detected, int(data["virtual-size"]),
                     int(data.get("actual-size", size)))
    info.format_specific = data.get("format-specific", {}).get("data", {})
    info.checks.append("format_inspector safety checks passed")
    if info.virtual_size > max_virtual_size:
        raise ImageTooLargeError(
            f"{path}: virtual size {human_size(info.virtual_size)} exceeds the limit of {human_size(max_virtual_size)} "
            "(--max-virtual-size)")
    return info


@contextlib.contextmanager
def _checked_beside(info: ImageInfo) -> Iterator[None]:
    """`qemu-img check` on a thread for the block's duration; its failure is raised at the end."""
    if info.format not in CHECKABLE:
        yield
        return
    failed: list[BaseException] = []

    def check() -> None:
        try:
            _qemu_check(info.path, info.format)
        except Exception as exc:  # re-raised on the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=check, name="qemu-img check", daemon=True)
    thread.start()
    try:
        yield
    except BaseException as exc:
        thread.join()
        if failed:
            raise failed[0] from exc
        raise
    thread.join()
    if failed:
        raise failed[0]
    info.checks.append("qemu-img check found no corruption")


def inspector_module() -> ModuleType:
    """oslo_utils' format_inspector, imported when a file is really inspected, not at start-up."""
    from oslo_utils.imageutils import format_inspector

    return format_inspector


def detect_format(path: Path, expected: str | None = None) -> format_inspector.FileInspector | None:
    """format_inspector's verdict on a file, read in 1 MiB chunks until it has decided.

    detect_file_format reads 4 KiB at a time, which costs seconds on formats whose
    metadata sits at the end (a streamOptimized vmdk's footer).
    """
    with path.open("rb") as f:
        wrapper = inspector_module().InspectWrapper(f, expected_format=expected)
        found: format_inspector.FileInspector | None = None
        try:
            while wrapper.read(1 << 20):
                found = wrapper.format
                if found:
                    return found
        finally:
            wrapper.close()
        found = wrapper.format  # some formats decide only at end of file
        return found


def _detect(path: Path) -> str:
    fi = inspector_module()
    try:
        inspector = detect_format(path)
    except fi.ImageFormatError as exc:
        raise UnsafeImageError(f"{path}: ambiguous content: {exc}") from exc
    if inspector is None:
        raise UnsafeImageError(f"{path}: format could not be detected")
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        reasons = "; ".join(str(v) for v in exc.failures.values())
        raise UnsafeImageError(f"{path}: unsafe {inspector}: {reasons}") from exc
    return str(inspector)


def _check_qemu_info(path: Path, driver: str, data: dict[str, Any]) -> None:
    """Belt and braces after format_inspector: qemu's own view must agree it is self-contained."""
    if data.get("format") != driver:
        raise FormatMismatchError(f"{path}: qemu-img reads it as {data.get('format')}, not {driver}")
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise UnsafeImageError(f"{path}: has a backing file ({data.get('backing-filename')})")
    specific = data.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        raise UnsafeImageError(f"{path}: has an external data file ({specific['data-file']})")
    for extent in specific.get("extents", []):
        name = extent.get("filename")
        if name and Path(name).resolve() != path.resolve():
            raise UnsafeImageError(f"{path}: vmdk extent points at another file ({name})")


def _qemu_check(path: Path, driver: str) -> None:
    try:
        qemu.check(path, driver)
    except CommandFailed as exc:
        raise UnsafeImageError(f"{path}: truncated or corrupt {driver} image ({exc})") from exc


def _read_partitions(info: ImageInfo, disk: nbd.Export) -> None:
    info.head = disk.read(0, min(partitions.HEAD_BYTES, info.virtual_size))
    try:
        info.table, info.partitions = partitions.parse(info.head, info.virtual_size)
    except partitions.PartitionTableError as exc:
        raise UnsafeImageError(f"{info.path}: bad partition table: {exc}") from exc
