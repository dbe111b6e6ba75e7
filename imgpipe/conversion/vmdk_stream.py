"""Write streamOptimized VMDKs natively, deflating grains on every core.

qemu-img deflates each 64 KiB grain at zlib level 6 on one core, which makes
streamOptimized output about five times slower than raw. This writer reads only
the data extents of a sparse raw image, skips all-zero grains, deflates batches of
grains in a thread pool (ISA-L and zlib both release the GIL) and writes the results
strictly in order, so the output can go to a pipe or an upload stream.

Layout, as in VMware's "Virtual Disk Format 5.0" and VMware's own stream writer,
and as qemu's block/vmdk.c reads it when the header says the GD is at the end:

    header (gdOffset = GD_AT_END) | descriptor | zero padding to one grain
    per grain table: its grains (12-byte marker + deflate data, sector padded)
                     | GT marker | grain table
    GD marker | grain directory | footer marker | footer (header + real gdOffset)
    | end-of-stream marker

Grain tables follow their own grains (instead of all at the end) so only one grain
table is ever held in memory, whatever the disk size.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from isal import isal_zlib as _deflate

# ISA-L level 1 output is ~12% larger than qemu's zlib level 6 on a real ext4 disk,
# for a tenth of the CPU time.
COMPRESS_LEVEL = 1

SECTOR = 512
GRAIN_SECTORS = 128
GRAIN_SIZE = GRAIN_SECTORS * SECTOR
GTES_PER_GT = 512
GT_COVERAGE = GTES_PER_GT * GRAIN_SIZE
GT_SECTORS = GTES_PER_GT * 4 // SECTOR
# Batches never straddle a grain table because BATCH_SIZE divides GT_COVERAGE.
BATCH_SIZE = 1 << 20
# Raw bytes asked for but not yet written; bounds memory for any disk size and core count.
MAX_INFLIGHT_BYTES = 64 << 20
# Batches asked for ahead per deflate worker: reads in flight while the others deflate.
BATCHES_PER_WORKER = 8
# Grain table entries are 32-bit sector numbers, so neither disk nor file may pass 2 TiB.
MAX_SECTORS = 1 << 32

VMDK_MAGIC = b"KDMV"
VMDK_VERSION = 3
FLAG_NL_DETECT = 1 << 0
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
STREAM_FLAGS = FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS
COMPRESS_DEFLATE = 1
NL_CHECK = b"\n \r\n"
GD_AT_END = (1 << 64) - 1
DESC_OFFSET_SECTORS = 1  # right after the header, where qemu and Glance require it
DESC_SECTORS = 20  # qemu's DESC_SIZE: qemu rewrites this many sectors when it updates the CID
OVERHEAD_SECTORS = GRAIN_SECTORS  # header + descriptor padded to a grain, as VMware does

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize,
# numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown, newline check, compression
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
GRAIN_MARKER = struct.Struct("<QI")  # lba, compressed size
META_MARKER = struct.Struct("<QII")  # sectors that follow, 0, marker type
GRAIN_TABLE = struct.Struct(f"<{GTES_PER_GT}I")
ZERO_GRAIN = bytes(GRAIN_SIZE)

# qemu-img's adapter_type values; it writes them into the descriptor verbatim.
ADAPTER_TYPES = ("ide", "lsilogic", "buslogic", "legacyESX")
IDE_HEADS = 16
SCSI_HEADS = 255  # what VMware uses for every non-IDE adapter
SECTORS_PER_TRACK = 63
VIRTUAL_HW_VERSION = "4"
TOOLS_VERSION = "2147483647"
DEFAULT_EXTENT_NAME = "disk.vmdk"
FORBIDDEN_NAME_CHARS = frozenset('"/\\')

DESCRIPTOR = """\
# Disk DescriptorFile
version=1
CID={cid:x}
parentCID=ffffffff
createType="streamOptimized"

# Extent description
RW {sectors} SPARSE "{name}"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "{hw_version}"
ddb.geometry.cylinders = "{cylinders}"
ddb.geometry.heads = "{heads}"
ddb.geometry.sectors = "{sectors_per_track}"
ddb.adapterType = "{adapter_type}"
ddb.toolsVersion = "{tools_version}"
"""


@dataclass(frozen=True)
class Disk:
    """What the writer reads: the guest-visible size and its data ranges (holes are never read).

    `start_read(offset, length)` is called in order from one thread, and may send the read off
    at once (so the source works ahead of the deflating); the function it returns is called
    from a deflate worker and gives the bytes (short reads past the end are zero-padded)."""

    size: int
    extents: Callable[[], Iterator[tuple[int, int]]]
    start_read: Callable[[int, int], Callable[[], bytes | bytearray]]
    label: str


@contextlib.contextmanager
def raw_disk(path: Path) -> Iterator[Disk]:
    """A sparse raw file as a Disk: its holes (SEEK_HOLE) are never read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        yield Disk(size, lambda: _data_extents(fd, size),
                   lambda offset, length: functools.partial(os.pread, fd, length, offset), str(path))
    finally:
        os.close(fd)


def write_stream_optimized(
    disk: Disk,
    dest: BinaryIO,
    *,
    adapter_type: str = "lsilogic",
    jobs: int | None = None,
    extent_name: str | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """Write a streamOptimized VMDK of `disk` into the open binary file `dest`.

    `dest` must be positioned at offset 0; it is only ever written forward.
    `extent_name` is the file name the descriptor's extent line shows (default: the
    base name of `dest.name`); pass the final name when `dest` is a temporary file.
    `on_progress` gets the percentage of the disk written so far.
    """
    if adapter_type not in ADAPTER_TYPES:
        raise ValueError(f"adapter_type {adapter_type!r} is not one of {', '.join(ADAPTER_TYPES)}")
    workers = (os.cpu_count() or 1) if jobs is None else jobs
    if workers < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    name = _extent_name(dest, extent_name)
    capacity = -(-disk.size // SECTOR)
    if not 0 < capacity <= MAX_SECTORS:
        # qemu takes capacity 0 for a descriptor-only file and cannot open it.
        raise ValueError(f"{disk.label}: a VMDK extent holds 1 byte to 2 TiB, not {disk.size} bytes")
    stream = _Stream(dest, capacity)
    stream.write(_head(capacity, adapter_type, name))
    _write_grains(disk, stream, workers, on_progress)
    stream.finish()


def _extent_name(dest: BinaryIO, extent_name: str | None) -> str:
    """Pick a descriptor-safe extent name: readers reject paths and quotes break parsing."""
    dest_name = getattr(dest, "name", None)
    if extent_name is None:
        extent_name = Path(dest_name).name if isinstance(dest_name, str) else DEFAULT_EXTENT_NAME
    if (
        not extent_name
        or not extent_name.isascii()
        or not extent_name.isprintable()
        or FORBIDDEN_NAME_CHARS & set(extent_name)
    ):
        raise ValueError(f"extent name {extent_name!r} must be a plain printable ASCII file name")
    return extent_name


def _head(capacity: int, adapter_type: str, name: str) -> bytes:
    """Header, embedded descriptor and padding up to the first grain."""
    descriptor = _descriptor(capacity, adapter_type, name)
    head = _header(capacity, GD_AT_END) + descriptor
    return head + bytes(OVERHEAD_SECTORS * SECTOR - len(head))


def _header(capacity: int, gd_offset: int) -> bytes:
    """The sparse extent header; the footer repeats it with the real GD offset."""
    header = HEADER.pack(
        VMDK_MAGIC,
        VMDK_VERSION,
        STREAM_FLAGS,
        capacity,
        GRAIN_SECTORS,
        DESC_OFFSET_SECTORS,
        DESC_SECTORS,
        GTES_PER_GT,
        0,  # no redundant grain directory: nothing can be rewritten in a stream
        gd_offset,
        OVERHEAD_SECTORS,
        0,
        NL_CHECK,
        COMPRESS_DEFLATE,
    )
    return header + bytes(SECTOR - len(header))


def _descriptor(capacity: int, adapter_type: str, name: str) -> bytes:
    """The descriptor text qemu-img writes, so devstack/glance parsers see the same keys."""
    heads = IDE_HEADS if adapter_type == "ide" else SCSI_HEADS
    text = DESCRIPTOR.format(
        cid=secrets.randbits(32),
        sectors=capacity,
        name=name,
        hw_version=VIRTUAL_HW_VERSION,
        cylinders=capacity // (SECTORS_PER_TRACK * heads),
        heads=heads,
        sectors_per_track=SECTORS_PER_TRACK,
        adapter_type=adapter_type,
        tools_version=TOOLS_VERSION,
    ).encode("ascii")
    if len(text) >= DESC_SECTORS * SECTOR:
        raise ValueError(f"extent name {name!r} is too long for the descriptor")
    return text + bytes(DESC_SECTORS * SECTOR - len(text))


def _marker(marker_type: int, sectors: int) -> bytes:
    """A metadata marker sector announcing `sectors` sectors of metadata."""
    marker = META_MARKER.pack(sectors, 0, marker_type)
    return marker + bytes(SECTOR - len(marker))


@dataclass(frozen=True)
class _Batch:
    """Deflated grains of one read: their records and (grain number, sectors) each."""

    records: bytes
    grains: list[tuple[int, int]]


class _Stream:
    """Sequential writer that tracks sector offsets, the open grain table and the GD."""

    def __init__(self, dest: BinaryIO, capacity: int) -> None:
        self._dest = dest
        self._capacity = capacity
        self._sector = 0
        self._gd = [0] * -(-capacity // (GTES_PER_GT * GRAIN_SECTORS))
        self._gt_index = -1
        self._gt = [0] * GTES_PER_GT

    def write(self, data: bytes) -> None:
        self._dest.write(data)
        self._sector += len(data) // SECTOR

    def add(self, batch: _Batch) -> None:
        """Write a batch's grains and point their grain table entries at them."""
        if not batch.grains:
            return
        gt_index = batch.grains[0][0] // GTES_PER_GT
        if gt_index != self._gt_index:
            self._flush_gt()
            self._gt_index = gt_index
        sector = self._sector
        for grain, sectors in batch.grains:
            self._gt[grain % GTES_PER_GT] = sector
            sector += sectors
        if sector >= MAX_SECTORS:
            raise ValueError("the VMDK would exceed 2 TiB, the limit of 32-bit grain offsets")
        self.write(batch.records)

    def finish(self) -> None:
        """Write the last grain table, the grain directory, footer and end-of-stream."""
        self._flush_gt()
        gd = struct.pack(f"<{len(self._gd)}I", *self._gd)
        gd += bytes(-len(gd) % SECTOR)
        self.write(_marker(MARKER_GD, len(gd) // SECTOR))
        gd_offset = self._sector
        self.write(gd)
        self.write(_marker(MARKER_FOOTER, 1))
        self.write(_header(self._capacity, gd_offset))
        self.write(_marker(MARKER_EOS, 0))

    def _flush_gt(self) -> None:
        if self._gt_index < 0:
            return
        self.write(_marker(MARKER_GT, GT_SECTORS))
        self._gd[self._gt_index] = self._sector
        self.write(GRAIN_TABLE.pack(*self._gt))
        self._gt = [0] * GTES_PER_GT
        self._gt_index = -1


def _write_grains(disk: Disk, stream: _Stream, workers: int,
                  on_progress: Callable[[float], None] | None) -> None:
    """Deflate batches in a pool, keeping a bounded window in flight, written in order.

    Each batch's read is started when it is queued, so the source reads up to a window ahead
    of the deflating and the writing."""
    window = max(2, min(BATCHES_PER_WORKER * workers, MAX_INFLIGHT_BYTES // BATCH_SIZE))
    pending: deque[tuple[Future[_Batch], int]] = deque()

    def write_oldest() -> None:
        future, end = pending.popleft()
        stream.add(future.result())
        if on_progress is not None:
            on_progress(100.0 * end / disk.size)

    with ThreadPoolExecutor(workers, thread_name_prefix="vmdk-deflate") as pool:
        for start, length in _batches(disk.extents()):
            if len(pending) >= window:
                write_oldest()
            fetch = disk.start_read(start, min(length, disk.size - start))
            pending.append((pool.submit(_deflate_batch, fetch, start, length), start + length))
        while pending:
            write_oldest()
    if on_progress is not None:
        on_progress(100.0)  # the holes after the last data batch need no writing


def _deflate_batch(fetch: Callable[[], bytes | bytearray], start: int, length: int) -> _Batch:
    """Read one batch and deflate its non-zero grains into sector-padded grain records.

    A short last grain (virtual size not a multiple of 64 KiB) is padded with zeros to
    a whole grain, as VMware's writer does; qemu and VMware both read it back.
    """
    data = fetch()
    if len(data) < length:  # past the end: the size need not be grain aligned
        data += bytes(length - len(data))
    parts: list[bytes] = []
    grains: list[tuple[int, int]] = []
    for offset in range(0, length, GRAIN_SIZE):
        grain = data[offset : offset + GRAIN_SIZE]
        if grain == ZERO_GRAIN:
            continue
        lba = (start + offset) // SECTOR
        packed = _deflate.compress(grain, COMPRESS_LEVEL)
        record_size = GRAIN_MARKER.size + len(packed)
        padding = -record_size % SECTOR
        parts += (GRAIN_MARKER.pack(lba, len(packed)), packed, bytes(padding))
        grains.append((lba // GRAIN_SECTORS, (record_size + padding) // SECTOR))
    return _Batch(b"".join(parts), grains)


def _batches(extents: Iterator[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Grain-aligned (offset, length) reads covering the data, cut at BATCH_SIZE boundaries."""
    done = 0
    for start, end in extents:
        start = max(start - start % GRAIN_SIZE, done)  # the previous extent may share a grain
        done = -(-end // GRAIN_SIZE) * GRAIN_SIZE
        while start < done:
            stop = min(done, start - start % BATCH_SIZE + BATCH_SIZE)
            yield start, stop - start
            start = stop


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges holding data; holes are skipped without reading them."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end
