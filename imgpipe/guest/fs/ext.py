"""ext2/3/4 parsed in-process from the blocks a lookup needs, read over NBD.

debugfs needs the partition as a file, and copying it out inflates every cluster of the
root: as slow as converting the whole disk. Inspection only needs the superblock, group
descriptors, the inodes and directory blocks on a few paths, and the heads of a few files:
a few hundred KiB. Memory-safe parsing, every count and pointer bounded by the superblock.
Filesystems using what this does not parse (meta_bg, inline data, encryption, unknown
features) raise Unsupported, and the caller falls back to debugfs on a full copy.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs import checks
from imgpipe.guest.fs.blocks import InodeTree
from imgpipe.guest.fs.budget import Budget
from imgpipe.guest.fs.checks import Check, Fields, power_of_two

MAGIC = 0xEF53
ROOT_INODE = 2
_INCOMPAT_FILETYPE = 0x2
_INCOMPAT_64BIT = 0x80
# filetype, recover, extents, 64bit, mmp, flex_bg, ea_inode, csum_seed, largedir, casefold
PARSED_INCOMPAT = 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x20000
_EXTENTS_FL = 0x80000
_INLINE_DATA_FL = 0x10000000
_EXTENT_MAGIC = 0xF30A
_MAX_EXTENT_DEPTH = 5
_UNINIT_EXTENT = 32768
_DIRECT_BLOCKS = 12
_KINDS = {0x8000: "file", 0x4000: "dir", 0xA000: "symlink"}


class Unsupported(Exception):
    """A valid filesystem this reader does not parse; debugfs on a full copy does."""


@dataclass(frozen=True)
class Inode:
    mode: int
    size: int
    flags: int
    block: bytes  # i_block: the extent tree root, block map, or a fast symlink's target

    @property
    def kind(self) -> str:
        return _KINDS.get(self.mode & 0xF000, "other")


class ExtBlocks(InodeTree[Inode]):
    """Tree (guest.fs.tree) over one ext2/3/4 filesystem, given a bounded random read."""

    # Superblock fields: struct.unpack hands them over untyped.
    inodes_count: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    blocks_count: int
    inode_size: int
    desc_size: int

    def __init__(self, read: Callable[[int, int], bytes], size: int, label: str,
                 budget: Budget | None = None) -> None:
        super().__init__(budget)
        self._read = read
        self.root = ROOT_INODE
        self.label = label
        sb = read(1024, 1024)
        if struct.unpack_from("<H", sb, 0x38)[0] != MAGIC:
            raise self._corrupt("bad superblock magic")
        (rev,) = struct.unpack_from("<I", sb, 0x4C)
        incompat = struct.unpack_from("<I", sb, 0x60)[0] if rev else 0
        if incompat & ~PARSED_INCOMPAT:
            raise Unsupported(f"incompatible features {incompat & ~PARSED_INCOMPAT:#x}")
        wide = bool(incompat & _INCOMPAT_64BIT)
        fields = superblock(sb, wide=wide, rev=rev)
        fields["partition_bytes"] = size
        checks.verify(CHECKS, fields, self._corrupt)
        self.inodes_count = fields["s_inodes_count"]
        self.first_data_block = fields["s_first_data_block"]
        self.blocks_per_group = fields["s_blocks_per_group"]
        self.inodes_per_group = fields["s_inodes_per_group"]
        self.blocks_count = fields["s_blocks_count"]
        self.inode_size = fields["s_inode_size"]
        self.desc_size = fields["s_desc_size"]
        self.block_size = _block_size(fields)
        self.filetype = bool(incompat & _INCOMPAT_FILETYPE)
        self._descriptors: dict[int, bytes] = {}

    def _symlink(self, inode: Inode) -> bytes:
        if inode.size < 60 and not inode.flags & (_EXTENTS_FL | _INLINE_DATA_FL):
            return inode.block[:inode.size]
        return self._data(inode, min(inode.size, self.block_size))

    def _directory(self, ino: int, inode: Inode) -> dict[str, int]:
        self.budget.directory(inode.size, f"{self.label}: directory inode {ino}")
        return dict(self._dirents(self._data(inode, inode.size), ino))

    def _dirents(self, data: bytes, ino: int) -> Iterator[tuple[str, int]]:
        """Linear scan: htree index blocks look like empty entries, so this sees every name."""
        for base in range(0, len(data), self.block_size):
            pos, end = base, min(base + self.block_size, len(data))
            while pos + 8 <= end:
                child, rec_len, name_len = struct.unpack_from("<IHB" if self.filetype else "<IHH", data, pos)
                if rec_len < 8 or rec_len % 4 or pos + rec_len > end or 8 + name_len > rec_len:
                    raise self._corrupt(f"directory inode {ino}: bad entry at byte {pos}")
                if child:
                    if child > self.inodes_count:
                        raise self._corrupt(f"directory inode {ino} names inode {child}")
                    yield data[pos + 8:pos + 8 + name_len].decode(errors="surrogateescape"), child
                pos += rec_len

    def _inode(self, ino: int) -> Inode:
        if not 1 <= ino <= self.inodes_count:
            raise self._corrupt(f"inode {ino} out of range")
        group, index = divmod(ino - 1, self.inodes_per_group)
        desc = self._descriptor(group)
        table = struct.unpack_from("<I", desc, 0x8)[0]
        if self.desc_size >= 64:
            table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
        if not table or table >= self.blocks_count:
            raise self._corrupt(f"group {group}'s inode table is at block {table}")
        raw = self._read(table * self.block_size + index * self.inode_size, 128)
        mode, size_lo, flags, size_hi = (struct.unpack_from("<H", raw, 0)[0], struct.unpack_from("<I", raw, 4)[0],
                                         struct.unpack_from("<I", raw, 0x20)[0], struct.unpack_from("<I", raw, 0x6C)[0])
        if flags & _INLINE_DATA_FL:
            raise Unsupported(f"inode {ino} keeps its data inline")
        return Inode(mode, size_lo | size_hi << 32, flags, raw[0x28:0x28 + 60])

    def _data(self, inode: Inode, length: int) -> bytes:
        """The first `length` bytes of a file: holes and unwritten extents read as zeros."""
        want = -(-length // self.block_size)
        out = bytearray(want * self.block_size)
        for logical, physical, count, written in self._runs(inode, want):
            count = min(count, want - logical)
            if count <= 0:
                continue
            if physical + count > self.blocks_count:
                raise self._corrupt(f"a file's extent points past the filesystem (block {physical})")
            if written:
                start = logical * self.block_size
                out[start:start + count * self.block_size] = self._blocks(physical, count)
        return bytes(out[:length])

    def _runs(self, inode: Inode, want: int) -> Iterator[tuple[int, int, int, bool]]:
        """(logical block, physical block, count, written) runs covering the first `want` blocks."""
        if inode.flags & _EXTENTS_FL:
            yield from self._extents(inode.block, _MAX_EXTENT_DEPTH, want)
            return
        pointers = struct.unpack("<15I", inode.block)
        blocks = list(pointers[:_DIRECT_BLOCKS])
        per = self.block_size // 4
        for level, top in enumerate(pointers[_DIRECT_BLOCKS:]):
            if len(blocks) >= want:
                break
            blocks += self._indirect(top, level, min(want - len(blocks), per ** (level + 1)))
        for logical, physical in enumerate(blocks[:want]):
            if physical:
                yield logical, physical, 1, True

    def _indirect(self, block: int, level: int, want: int) -> list[int]:
        """The data block numbers under one indirect block (level 0: it points at data)."""
        if not block:
            return [0] * want
        pointers = struct.unpack(f"<{self.block_size // 4}I", self._blocks(block, 1))
        if level == 0:
            return list(pointers[:want])
        span = (self.block_size // 4) ** level
        found: list[int] = []
        for pointer in pointers:
            if len(found) >= want:
                break
            found += self._indirect(pointer, level - 1, min(want - len(found), span))
        return found

    def _extents(self, node: bytes, depth_left: int, want: int) -> Iterator[tuple[int, int, int, bool]]:
        magic, entries, most, depth = struct.unpack_from("<HHHH", node)
        if magic != _EXTENT_MAGIC or entries > most or 12 + 12 * entries > len(node) or depth > depth_left:
            raise self._corrupt("bad extent tree")
        for i in range(entries):
            at = 12 + 12 * i
            if depth == 0:
                logical, count, hi, lo = struct.unpack_from("<IHHI", node, at)
                if logical >= want:
                    return
                written = count <= _UNINIT_EXTENT
                yield logical, lo | hi << 32, count if written else count - _UNINIT_EXTENT, written
            else:
                logical, lo, hi = struct.unpack_from("<IIH", node, at)
                if logical >= want:
                    return
                child = lo | hi << 32
                if not child or child >= self.blocks_count:
                    raise self._corrupt(f"extent index points at block {child}")
                yield from self._extents(self._blocks(child, 1), depth - 1, want)

    def _blocks(self, first: int, count: int) -> bytes:
        return self._read(first * self.block_size, count * self.block_size)

    def _descriptor(self, group: int) -> bytes:
        """One group's descriptor, from the table's block that holds it, read when a lookup first
        needs an inode of that group: the table has one per group, a lookup meets a handful."""
        index, at = divmod(group * self.desc_size, self.block_size)
        if index not in self._descriptors:
            self._descriptors[index] = self._blocks(self.first_data_block + 1 + index, 1)
        return self._descriptors[index][at:at + self.desc_size]

    def _corrupt(self, why: str) -> GuestInspectionError:
        return GuestInspectionError(f"{self.label}: corrupt ext filesystem: {why}")


def superblock(sb: bytes, *, wide: bool, rev: int) -> dict[str, int]:
    """The superblock fields the checks and the reader use, by their kernel names; s_desc_size
    is 32 without the 64bit feature (the field is then unused), s_inode_size 128 in revision 0."""
    (inodes_count, blocks_lo) = struct.unpack_from("<II", sb, 0x00)
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if wide else 0
    return {"s_inodes_count": inodes_count, "s_blocks_count": blocks_lo | blocks_hi << 32,
            "s_first_data_block": struct.unpack_from("<I", sb, 0x14)[0],
            "s_log_block_size": struct.unpack_from("<I", sb, 0x18)[0],
            "s_blocks_per_group": struct.unpack_from("<I", sb, 0x20)[0],
            "s_inodes_per_group": struct.unpack_from("<I", sb, 0x28)[0],
            "s_inode_size": struct.unpack_from("<H", sb, 0x58)[0] if rev else 128,
            "s_desc_size": struct.unpack_from("<H", sb, 0xFE)[0] if wide else 32, "wide": int(wide)}


def _block_size(f: Fields) -> int:
    return 1024 << f["s_log_block_size"]


def _groups(f: Fields) -> int:
    return -(-(f["s_blocks_count"] - f["s_first_data_block"]) // f["s_blocks_per_group"])


def _descriptor_table_end(f: Fields) -> int:
    """The block after the group-descriptor table (the first data block's superblock, then the table)."""
    return f["s_first_data_block"] + 1 + -(-_groups(f) * f["s_desc_size"] // _block_size(f))


# ext4_fill_super's geometry checks (and mke2fs's invariants), in an order where each check may
# rely on the ones before it.
CHECKS = (
    Check(field="s_log_block_size", rule="a valid filesystem has 0 to 6 here (1 KiB to 64 KiB blocks)",
          holds=lambda f: f["s_log_block_size"] <= 6),
    Check(field="s_blocks_count", rule="the blocks must fit in the partition's {partition_bytes} bytes",
          holds=lambda f: f["s_blocks_count"] > 0 and f["s_blocks_count"] * _block_size(f) <= f["partition_bytes"]),
    Check(field="s_first_data_block", rule="a valid filesystem has 1 here with 1 KiB blocks, else 0",
          holds=lambda f: f["s_first_data_block"] == (1 if _block_size(f) == 1024 else 0)
          and f["s_first_data_block"] < f["s_blocks_count"]),
    Check(field="s_blocks_per_group", rule="a valid filesystem has a multiple of 8 from 8 to 8 times the block size",
          holds=lambda f: 8 <= f["s_blocks_per_group"] <= 8 * _block_size(f) and not f["s_blocks_per_group"] % 8),
    Check(field="s_inode_size", rule="a valid filesystem has a power of two from 128 to the block size",
          holds=lambda f: power_of_two(f["s_inode_size"]) and 128 <= f["s_inode_size"] <= _block_size(f)),
    Check(field="s_desc_size", rule="a 64bit filesystem has a power of two from 64 to 1024",
          holds=lambda f: not f["wide"] or (power_of_two(f["s_desc_size"]) and 64 <= f["s_desc_size"] <= 1024)),
    Check(field="s_inodes_per_group", rule="a valid filesystem has one block of inodes to 8 times the block size",
          holds=lambda f: _block_size(f) // f["s_inode_size"] <= f["s_inodes_per_group"] <= 8 * _block_size(f)),
    Check(field="s_inodes_count", rule="a valid filesystem has s_inodes_per_group times its group count",
          holds=lambda f: f["s_inodes_count"] == f["s_inodes_per_group"] * _groups(f)),
    Check(field="s_blocks_count", rule="the group-descriptor table must end inside the filesystem",
          holds=lambda f: _descriptor_table_end(f) <= f["s_blocks_count"]),
)
