"""XFS parsed in-process from the blocks a lookup needs, read over NBD.

The same reason as fs/ext.py: inspection needs a few paths and file heads, not a copy of
the partition. An inode's place follows from its number (AG, block, slot bit fields), so
no AG header is read: the superblock, the inodes on a path, their directory blocks and
bmap btree blocks, and the heads of files are all that is fetched. Every count, pointer
and depth is checked against the superblock and the fork that holds it before use.
Directories are listed from their data blocks whatever their form (block, leaf, node),
as readdir does: the hash index in leaf and node blocks is only a shortcut to them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs import checks
from imgpipe.guest.fs.blocks import InodeTree
from imgpipe.guest.fs.budget import Budget
from imgpipe.guest.fs.checks import Check
from imgpipe.guest.fs.ext import Unsupported

MAGIC = b"XFSB"
_VERSION_DIRV2 = 0x2000
_VERSION_MOREBITS = 0x8000
_FEATURES2_FTYPE = 0x200
_INCOMPAT_FTYPE = 0x1
# ftype, sparse inodes, meta_uuid, bigtime, nrext64, exchange-range, parent pointers: none
# changes how inodes, directories or data forks are laid out beyond what is parsed here.
PARSED_INCOMPAT = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80
_FMT_LOCAL, _FMT_EXTENTS, _FMT_BTREE = 1, 2, 3
_DIFLAG_REALTIME = 0x1
_DIFLAG2_NREXT64 = 0x10
_BMBT_MAGIC = {4: b"BMAP", 5: b"BMA3"}
_BMBT_HEADER = {4: 24, 5: 72}
_DIR_BLOCK_MAGIC = {4: b"XD2B", 5: b"XDB3"}
_DIR_DATA_MAGIC = {4: b"XD2D", 5: b"XDD3"}
_DIR_HEADER = {4: 16, 5: 64}
_SYMLINK_MAGIC = b"XSLM"
_SYMLINK_HEADER = 56
_DIR_LEAF_OFFSET = 32 << 30  # where a directory's data space ends and its hash index begins
MAX_BMBT_LEVELS = 10  # more than a 2^64-extent fork needs
MAX_SYMLINK = 1024  # MAXPATHLEN: the kernel refuses longer targets
_KINDS = {0x8000: "file", 0x4000: "dir", 0xA000: "symlink"}


@dataclass(frozen=True)
class Inode:
    number: int
    mode: int
    format: int
    size: int
    extents: int  # what the inode claims its data fork maps
    flags: int
    fork: bytes  # the data fork in the inode: local data, an extent list or a bmap btree root

    @property
    def kind(self) -> str:
        return _KINDS.get(self.mode & 0xF000, "other")


@dataclass(frozen=True)
class Extent:
    offset: int  # file block
    block: int  # filesystem block number, AG-relative bits included
    count: int
    unwritten: bool


class XfsBlocks(InodeTree[Inode]):
    """Tree (guest.fs.tree) over one XFS filesystem, given a bounded random read."""

    loops_are_corrupt = True

    # Superblock fields: struct.unpack hands them over untyped.
    block_size: int
    dblocks: int
    root: int
    ag_blocks: int
    ag_count: int
    inode_size: int
    inopblog: int
    agblklog: int

    def __init__(self, read: Callable[[int, int], bytes], size: int, label: str,
                 budget: Budget | None = None) -> None:
        super().__init__(budget)
        self._read_at = read
        self._size = size
        self.label = label
        sb = self._read(0, 512)
        if sb[:4] != MAGIC:
            raise self._corrupt("bad superblock magic")
        (self.block_size, self.dblocks) = struct.unpack_from(">IQ", sb, 4)
        (self.root,) = struct.unpack_from(">Q", sb, 56)
        (self.ag_blocks, self.ag_count) = struct.unpack_from(">II", sb, 84)
        (versionnum, _, self.inode_size, inopblock) = struct.unpack_from(">HHHH", sb, 100)
        (block_log, _, inode_log, self.inopblog, self.agblklog) = struct.unpack_from(">5B", sb, 120)
        (dirblklog,) = struct.unpack_from(">B", sb, 192)
        (features2,) = struct.unpack_from(">I", sb, 200)
        (incompat,) = struct.unpack_from(">I", sb, 216)
        self.version = versionnum & 0xF
        if self.version in (1, 2, 3):
            raise Unsupported(f"XFS superblock version {self.version}")
        if self.version == 4:
            if not versionnum & _VERSION_DIRV2:
                raise Unsupported("version 1 directories")
            self.ftype = bool(versionnum & _VERSION_MOREBITS and features2 & _FEATURES2_FTYPE)
        elif self.version == 5:
            if incompat & ~PARSED_INCOMPAT:
                raise Unsupported(f"incompatible features {incompat & ~PARSED_INCOMPAT:#x}")
            self.ftype = bool(incompat & _INCOMPAT_FTYPE)
        else:
            raise self._corrupt(f"superblock version {self.version}")
        checks.verify(CHECKS, {"sb_blocklog": block_log, "sb_blocksize": self.block_size, "sb_inodelog": inode_log,
                               "sb_inodesize": self.inode_size, "sb_inopblock": inopblock, "sb_inopblog": self.inopblog,
                               "sb_agblklog": self.agblklog, "sb_agblocks": self.ag_blocks, "sb_agcount": self.ag_count,
                               "sb_dblocks": self.dblocks, "sb_dirblklog": dirblklog, "partition_bytes": size},
                      self._corrupt)
        self.dir_blocks = 1 << dirblklog  # filesystem blocks per directory block
        self._inode_offset(self.root)

    def _directory(self, ino: int, inode: Inode) -> dict[str, int]:
        if inode.format == _FMT_LOCAL:
            return dict(self._shortform(inode))
        if inode.format in (_FMT_EXTENTS, _FMT_BTREE):
            self.budget.directory(inode.size, f"{self.label}: directory inode {ino}")
            return dict(self._dir_blocks(inode))
        raise self._corrupt(f"directory inode {ino} has fork format {inode.format}")

    def _shortform(self, inode: Inode) -> Iterator[tuple[str, int]]:
        """Entries packed in the inode: count, parent, then (namelen, offset, name, [ftype], inumber)."""
        data = inode.fork[:inode.size]
        if inode.size > len(inode.fork) or len(data) < 6:
            raise self._corrupt(f"directory inode {inode.number}: short form of {inode.size} bytes")
        count, wide = data[0], data[1]
        width = 8 if wide else 4
        pos = 2 + width
        for _ in range(count):
            namelen = data[pos] if pos < len(data) else 0
            name_at = pos + 3
            pos = name_at + namelen + self.ftype + width
            if not namelen or pos > len(data):
                raise self._corrupt(f"directory inode {inode.number}: bad short form entry")
            child = int.from_bytes(data[pos - width:pos], "big")
            yield self._name(data[name_at:name_at + namelen]), self._child(inode.number, child)

    def _dir_blocks(self, inode: Inode) -> Iterator[tuple[str, int]]:
        """Entries of every data block: the first `size` bytes of the fork are the data space."""
        want = -(-min(inode.size, _DIR_LEAF_OFFSET) // self.block_size)
        extents = self._map(inode, want)
        starts = sorted({b // self.dir_blocks for e in extents for b in range(e.offset, min(e.offset + e.count, want))})
        dir_bytes = self.dir_blocks * self.block_size
        header = _DIR_HEADER[self.version]
        for first in starts:
            block = self._gather(extents, first * self.dir_blocks, self.dir_blocks)
            magic = block[:4]
            if magic == _DIR_BLOCK_MAGIC[self.version] and first == 0:
                (leaves,) = struct.unpack_from(">I", block, dir_bytes - 8)
                end = dir_bytes - 8 - 8 * leaves
                if end < header:
                    raise self._corrupt(f"directory inode {inode.number}: {leaves} leaf entries in one block")
            elif magic == _DIR_DATA_MAGIC[self.version]:
                end = dir_bytes
            else:
                raise self._corrupt(f"directory inode {inode.number}: bad magic in directory block {first}")
            yield from self._data_entries(block, header, end, inode.number)

    def _data_entries(self, block: bytes, pos: int, end: int, ino: int) -> Iterator[tuple[str, int]]:
        """(inumber, namelen, name, [ftype], tag) entries padded to 8 bytes, or free spans."""
        while pos < end:
            if pos + 8 > end:
                raise self._corrupt(f"directory inode {ino}: entry overruns its block")
            if block[pos:pos + 2] == b"\xff\xff":
                (length,) = struct.unpack_from(">H", block, pos + 2)
                if length < 8 or length % 8 or pos + length > end:
                    raise self._corrupt(f"directory inode {ino}: bad free span at byte {pos}")
                pos += length
                continue
            (child,) = struct.unpack_from(">Q", block, pos)
            namelen = block[pos + 8]
            length = (8 + 1 + namelen + self.ftype + 2 + 7) & ~7
            if not namelen or pos + length > end:
                raise self._corrupt(f"directory inode {ino}: bad entry at byte {pos}")
            yield self._name(block[pos + 9:pos + 9 + namelen]), self._child(ino, child)
            pos += length

    def _symlink(self, inode: Inode) -> bytes:
        if inode.size > MAX_SYMLINK or not inode.size:
            raise self._corrupt(f"symlink inode {inode.number} claims {inode.size} bytes")
        if inode.format == _FMT_LOCAL or self.version == 4:
            return self._data(inode, inode.size)
        per = self.block_size - _SYMLINK_HEADER
        count = -(-inode.size // per)  # the blocks the kernel gives a target this long
        target = b""
        for extent in self._map(inode, count):  # v5: one header per extent, read as one buffer
            raw = self._blocks(extent.block, min(extent.count, count - extent.offset))
            magic, _, length = struct.unpack_from(">4sII", raw)
            if extent.unwritten or magic != _SYMLINK_MAGIC or length > len(raw) - _SYMLINK_HEADER:
                raise self._corrupt(f"symlink inode {inode.number}: bad remote block")
            target += raw[_SYMLINK_HEADER:_SYMLINK_HEADER + length]
        if len(target) != inode.size:
            raise self._corrupt(f"symlink inode {inode.number}: {len(target)} of {inode.size} bytes")
        return target

    def _data(self, inode: Inode, length: int) -> bytes:
        """The first `length` bytes of a file: holes and unwritten extents read as zeros."""
        if inode.flags & _DIFLAG_REALTIME:
            raise Unsupported(f"inode {inode.number} is on the realtime device")
        if inode.format == _FMT_LOCAL:
            if inode.size > len(inode.fork):
                raise self._corrupt(f"inode {inode.number} holds {inode.size} bytes in a {len(inode.fork)}-byte fork")
            return inode.fork[:length]
        want = -(-length // self.block_size)
        return self._gather(self._map(inode, want), 0, want)[:length]

    def _gather(self, extents: list[Extent], first: int, count: int) -> bytes:
        """File blocks [first, first + count) from sorted extents, zeros where none is written."""
        out = bytearray(count * self.block_size)
        for e in extents:
            start, stop = max(e.offset, first), min(e.offset + e.count, first + count)
            if start < stop and not e.unwritten:
                at = (start - first) * self.block_size
                out[at:at + (stop - start) * self.block_size] = self._blocks(e.block + start - e.offset, stop - start)
        return bytes(out)

    def _map(self, inode: Inode, want: int) -> list[Extent]:
        """The data fork's extents that start below file block `want`, checked and in order."""
        found: list[Extent] = []
        if inode.format == _FMT_EXTENTS:
            if inode.extents * 16 > len(inode.fork):
                raise self._corrupt(f"inode {inode.number} claims {inode.extents} extents "
                                    f"in a {len(inode.fork)}-byte fork")
            found = [self._extent(inode.fork, 16 * i, inode.number) for i in range(inode.extents)]
        elif inode.format == _FMT_BTREE:
            level, records = struct.unpack_from(">HH", inode.fork)
            most = (len(inode.fork) - 4) // 16
            if not 1 <= level <= MAX_BMBT_LEVELS or not 1 <= records <= most:
                raise self._corrupt(f"inode {inode.number}: bmap btree root of level {level} with {records} records")
            keys = struct.unpack_from(f">{records}Q", inode.fork, 4)
            pointers = struct.unpack_from(f">{records}Q", inode.fork, 4 + 8 * most)
            self._walk(inode, keys, pointers, level - 1, want, found, set())
        else:
            raise self._corrupt(f"inode {inode.number} has data fork format {inode.format}")
        self._check_order(found, inode.number)
        return [e for e in found if e.offset < want]

    def _walk(self, inode: Inode, keys: tuple[int, ...], pointers: tuple[int, ...], level: int, want: int,
              found: list[Extent], seen: set[int]) -> bool:
        """Collect leaf records under the children whose key is below `want`; True once past it.

        A child's first key must equal its parent's key for it (as xfs_scrub requires), so every
        block read leads to a record below `want`: the walk reads at most depth x want blocks."""
        header = _BMBT_HEADER[self.version]
        most = (self.block_size - header) // 16
        for key, pointer in zip(keys, pointers, strict=True):
            if key >= want:
                return True
            if pointer in seen:
                raise self._corrupt(f"inode {inode.number}: bmap btree block {pointer} is reached twice")
            seen.add(pointer)
            block = self._blocks(self._fsblock(pointer, 1), 1)
            magic, child_level, records = struct.unpack_from(">4sHH", block)
            if magic != _BMBT_MAGIC[self.version] or child_level != level or not 1 <= records <= most:
                raise self._corrupt(f"inode {inode.number}: bad bmap btree block {pointer}")
            if level == 0:
                leaf = [self._extent(block, header + 16 * i, inode.number) for i in range(records)]
                if leaf[0].offset != key or len(found) + records > inode.extents:
                    raise self._corrupt(f"inode {inode.number}: bmap btree block {pointer} disagrees with its parent")
                found += leaf
                if leaf[-1].offset >= want:
                    return True
                continue
            child_keys = struct.unpack_from(f">{records}Q", block, header)
            if child_keys[0] != key:
                raise self._corrupt(f"inode {inode.number}: bmap btree block {pointer} disagrees with its parent")
            child_pointers = struct.unpack_from(f">{records}Q", block, header + 8 * most)
            if self._walk(inode, child_keys, child_pointers, level - 1, want, found, seen):
                return True
        return False

    def _extent(self, raw: bytes, at: int, ino: int) -> Extent:
        """One packed 128-bit record: unwritten flag, 54-bit file offset, 52-bit block, 21-bit count."""
        high, low = struct.unpack_from(">QQ", raw, at)
        extent = Extent((high >> 9) & ((1 << 54) - 1), (high & 0x1FF) << 43 | low >> 21, low & 0x1FFFFF,
                        bool(high >> 63))
        if not extent.count:
            raise self._corrupt(f"inode {ino} has an empty extent")
        return Extent(extent.offset, self._fsblock(extent.block, extent.count), extent.count, extent.unwritten)

    def _check_order(self, extents: list[Extent], ino: int) -> None:
        end = 0
        for e in extents:
            if e.offset < end:
                raise self._corrupt(f"inode {ino} has overlapping or unsorted extents")
            end = e.offset + e.count

    def _fsblock(self, number: int, count: int) -> int:
        """The linear block of an AG-encoded block number, its run checked to stay in its AG."""
        ag, block = number >> self.agblklog, number & ((1 << self.agblklog) - 1)
        linear = ag * self.ag_blocks + block
        if ag >= self.ag_count or block + count > self.ag_blocks or linear + count > self.dblocks:
            raise self._corrupt(f"block {number} is outside the filesystem")
        return linear

    def _inode_offset(self, ino: int) -> int:
        slot = ino & ((1 << self.inopblog) - 1)
        block = self._fsblock(ino >> self.inopblog, 1)
        return block * self.block_size + slot * self.inode_size

    def _child(self, parent: int, ino: int) -> int:
        """A directory entry's inode number, checked to lie in the filesystem before it is kept."""
        ag, block = ino >> (self.agblklog + self.inopblog), (ino >> self.inopblog) & ((1 << self.agblklog) - 1)
        if ag >= self.ag_count or block >= self.ag_blocks:
            raise self._corrupt(f"directory inode {parent} names inode {ino}")
        return ino

    def _inode(self, ino: int) -> Inode:
        raw = self._read(self._inode_offset(ino), self.inode_size)
        magic, mode, version, fmt = struct.unpack_from(">2sHBB", raw)
        if magic != b"IN" or version not in ((3,) if self.version == 5 else (1, 2)):
            raise self._corrupt(f"inode {ino} has a bad header")
        core = 176 if version == 3 else 100
        if version == 3 and struct.unpack_from(">Q", raw, 152)[0] != ino:
            raise self._corrupt(f"inode {ino} says it is inode {struct.unpack_from('>Q', raw, 152)[0]}")
        (size,) = struct.unpack_from(">Q", raw, 56)
        (small_count, fork_offset) = struct.unpack_from(">IxxB", raw, 76)
        (flags,) = struct.unpack_from(">H", raw, 90)
        wide = version == 3 and struct.unpack_from(">Q", raw, 120)[0] & _DIFLAG2_NREXT64
        extents = struct.unpack_from(">Q", raw, 24)[0] if wide else small_count
        fork_size = fork_offset * 8 if fork_offset else self.inode_size - core
        if core + fork_size > self.inode_size or size >> 63:
            raise self._corrupt(f"inode {ino} has an inconsistent core")
        return Inode(ino, mode, fmt, size, extents, flags, raw[core:core + fork_size])

    def _blocks(self, first: int, count: int) -> bytes:
        return self._read(first * self.block_size, count * self.block_size)

    def _read(self, offset: int, length: int) -> bytes:
        if offset + length > self._size:
            raise self._corrupt(f"read of {length} bytes at {offset} is past the end")
        data = self._read_at(offset, length)
        if len(data) != length:
            raise self._corrupt(f"short read at {offset}")
        return data

    @staticmethod
    def _name(raw: bytes) -> str:
        return raw.decode(errors="surrogateescape")

    def _corrupt(self, why: str) -> GuestInspectionError:
        return GuestInspectionError(f"{self.label}: corrupt xfs filesystem: {why}")


# xfs_validate_sb_common's geometry checks, in an order where each may rely on the ones before it.
CHECKS = (
    Check(field="sb_blocklog", rule="a valid filesystem has 9 to 16 here (512 B to 64 KiB blocks)",
          holds=lambda f: 9 <= f["sb_blocklog"] <= 16),
    Check(field="sb_blocksize", rule="a valid filesystem has 2^sb_blocklog here",
          holds=lambda f: f["sb_blocksize"] == 1 << f["sb_blocklog"]),
    Check(field="sb_inodelog", rule="a valid filesystem has 8 to 11 here, at most sb_blocklog",
          holds=lambda f: 8 <= f["sb_inodelog"] <= min(11, f["sb_blocklog"])),
    Check(field="sb_inodesize", rule="a valid filesystem has 2^sb_inodelog here",
          holds=lambda f: f["sb_inodesize"] == 1 << f["sb_inodelog"]),
    Check(field="sb_inopblock", rule="a valid filesystem has sb_blocksize / sb_inodesize here",
          holds=lambda f: f["sb_inopblock"] == f["sb_blocksize"] >> f["sb_inodelog"]),
    Check(field="sb_inopblog", rule="a valid filesystem has sb_blocklog - sb_inodelog here",
          holds=lambda f: f["sb_inopblog"] == f["sb_blocklog"] - f["sb_inodelog"]),
    Check(field="sb_agblklog", rule="a valid filesystem has 1 to 31 here",
          holds=lambda f: 1 <= f["sb_agblklog"] <= 31),
    Check(field="sb_agblocks", rule="a valid filesystem has 1 to 2^sb_agblklog here",
          holds=lambda f: 0 < f["sb_agblocks"] <= 1 << f["sb_agblklog"]),
    Check(field="sb_agcount", rule="the allocation groups must cover sb_dblocks, the last one partly",
          holds=lambda f: f["sb_agcount"] > 0 and (f["sb_agcount"] - 1) * f["sb_agblocks"] < f["sb_dblocks"]
          <= f["sb_agcount"] * f["sb_agblocks"]),
    Check(field="sb_dblocks", rule="the blocks must fit in the partition's {partition_bytes} bytes",
          holds=lambda f: f["sb_dblocks"] * f["sb_blocksize"] <= f["partition_bytes"]),
    Check(field="sb_dirblklog", rule="a valid filesystem has directory blocks of at most 64 KiB",
          holds=lambda f: f["sb_blocklog"] + f["sb_dirblklog"] <= 16),
)
