"""Partitions of any qemu-readable image as raw files, for the tools that read what no
in-process reader parses (debugfs for ext inline_data, ntfs-3g).

qemu-img copies just one partition's window (the raw driver's offset/size over the real
format) into a sparse raw file: only allocated clusters are written, so the cost follows the
partition's data, never the disk's virtual size, and memory stays qemu-img's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from imgpipe import qemu
from imgpipe.errors import GuestInspectionError, NoSpaceError
from imgpipe.guest.fs.budget import Budget
from imgpipe.runner import CommandFailed, run
from imgpipe.source.inspect import ImageInfo
from imgpipe.source.partitions import Partition

# For the userspace tools that parse the guest's filesystems: nova's limits for untrusted images.
TOOL_LIMITS = qemu.INFO_LIMITS


def extract(info: ImageInfo, part: Partition | None, dest: Path, budget: Budget | None = None) -> Path:
    """A sparse raw copy of one partition, for debugfs/ntfs-3g to read; with a budget, refused
    before copying when the partition holds more data than its copy_bytes."""
    with _translated(info, dest):
        if budget is not None:
            where = f"{info.path}: {f'partition {part.number}' if part else 'whole disk'}"
            budget.copy(sum(end - start for start, end in qemu.data_extents(info.window(part))), where)
        run([qemu.QEMU_IMG, "convert", *info.window(part).args(), "-O", "raw", str(dest)], limits=qemu.IO_LIMITS)
    return dest


@contextlib.contextmanager
def _translated(info: ImageInfo, dest: Path) -> Iterator[None]:
    try:
        yield
    except CommandFailed as exc:
        if "No space left on device" in exc.result.stderr:
            raise NoSpaceError(f"{dest}: no space to copy a partition for guest inspection "
                               "(it needs the partition's data size)") from exc
        raise GuestInspectionError(f"{info.path}: cannot read a partition: {exc}") from exc
