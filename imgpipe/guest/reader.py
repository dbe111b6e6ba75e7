"""Partitions of any qemu-readable image as raw files that filesystem tools can read unmounted.

qemu-img copies just one partition's window (the raw driver's offset/size over the real
format) into a sparse raw file: only allocated clusters are written, so the cost follows the
partition's data, never the disk's virtual size, and memory stays qemu-img's.
"""

from __future__ import annotations

from pathlib import Path

from imgpipe import qemu
from imgpipe.errors import GuestInspectionError, NoSpaceError
from imgpipe.runner import CommandFailed, run
from imgpipe.source.inspect import ImageInfo
from imgpipe.source.partitions import Partition

_BLOCK = 65536
# For the userspace tools that parse the guest's filesystems: nova's limits for untrusted images.
TOOL_LIMITS = qemu.INFO_LIMITS


def window(info: ImageInfo, part: Partition | None) -> qemu.Source:
    """The partition's bytes (None: the whole disk holds one filesystem)."""
    if part is None:
        return info.source()
    return qemu.Source(info.path, info.format, part.start, part.size)


def probe(info: ImageInfo, part: Partition | None, dest: Path, length: int) -> bytes:
    """The first `length` bytes of a partition, for signature checks."""
    src = window(info, part)
    spec = ["--image-opts", f"if={src.image_opts()}"] if src.offset is not None else \
        ["-f", src.format, f"if={src.path}"]
    _run([qemu.QEMU_IMG, "dd", *spec, "-O", "raw", f"bs={_BLOCK}", f"count={-(-length // _BLOCK)}",
          f"of={dest}"], info)
    return dest.read_bytes()[:length]


def extract(info: ImageInfo, part: Partition | None, dest: Path) -> Path:
    """A sparse raw copy of one partition, for debugfs/mtools/ntfs-3g to read."""
    _run([qemu.QEMU_IMG, "convert", *window(info, part).args(), "-O", "raw", str(dest)], info)
    return dest


def _run(argv: list[str], info: ImageInfo) -> None:
    try:
        run(argv, limits=qemu.IO_LIMITS)
    except CommandFailed as exc:
        if "No space left on device" in exc.result.stderr:
            raise NoSpaceError(f"{argv[-1]}: no space to copy a partition for guest inspection "
                               "(it needs the partition's data size)") from exc
        raise GuestInspectionError(f"{info.path}: cannot read a partition: {exc}") from exc
