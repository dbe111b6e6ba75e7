"""btrfs parsed in-process from the tree nodes a lookup needs, read over NBD.

No userspace tool reads a btrfs image without mounting it, and inspection never mounts:
it needs the superblock, the chunk tree (logical to physical), the root tree (subvolumes)
and a few paths of one subvolume's fs tree: a few MiB at most. Every node is checked for
its address, fsid and level, and its keys against its parent's range, so a node pointing
at itself or at an ancestor ends in GuestInspectionError; every walk visits a bounded
number of nodes and every decompression stops at the extent's ram_bytes. Checksums are not
verified: a torn node fails the structural checks instead. Valid filesystems this does not
parse (several devices, striped chunks, zoned or extent-tree-v2, encryption) raise
fs.ext.Unsupported.
"""

from __future__ import annotations

import bisect
import itertools
import posixpath
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs import checks, lzo, tree
from imgpipe.guest.fs.checks import Check, power_of_two
from imgpipe.guest.fs.ext import Unsupported
from imgpipe.guest.fs.tree import Node

MAGIC = b"_BHRfS_M"
SUPER_OFFSET = 64 << 10
TOP_LEVEL = 5  # BTRFS_FS_TREE_OBJECTID
# mixed_backref, default_subvol, mixed_groups, lzo, zstd, big_metadata, extended_iref,
# skinny_metadata, no_holes, metadata_uuid, raid1c34, simple_quota
PARSED_INCOMPAT = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x800 | 0x10000
_INCOMPAT_METADATA_UUID = 0x400
_HEADER = 0x65
_LEAF_ITEM = 25
_KEY_PTR = 33
_MAX_LEVEL = 8
_MAX_KEY = (1 << 64) - 1
_CACHE_NODES = 256
_MAX_WALK_NODES = 4096  # 64 MiB of 16 KiB nodes: a directory of some 500 000 entries
_MAX_COMPRESSED = 128 << 10  # BTRFS_MAX_COMPRESSED: no compressed extent holds more, either side
_MAX_SYMLINK = 4095
_MAX_HOPS = 256  # parent directories or subvolumes between a subvolume and the top level
_STRIPED = 0x8 | 0x40 | 0x80 | 0x100  # raid0, raid10, raid5, raid6
_ROOT_TREE_DIR = 6
_CHUNK_OWNER = 256
_FIRST_FREE, _LAST_FREE = 256, (1 << 64) - 256
_INODE_ITEM, _INODE_REF, _DIR_ITEM, _DIR_INDEX, _EXTENT_DATA = 1, 12, 84, 96, 108
_ROOT_ITEM, _ROOT_BACKREF, _CHUNK_ITEM = 132, 144, 228
_KINDS = {1: "file", 2: "dir", 7: "symlink"}

Key = tuple[int, int, int]


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def name_hash(name: bytes) -> int:
    """The DIR_ITEM key offset: crc32c seeded with ~1, no final inversion (btrfs_name_hash)."""
    crc = 0xFFFFFFFE
    for b in name:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


@dataclass(frozen=True)
class Subvolume:
    id: int
    path: str  # relative to the top level: "root", "home", "a/b"


@dataclass(frozen=True)
class _Chunk:
    logical: int
    length: int
    physical: int


@dataclass(frozen=True)
class _Node:
    level: int
    keys: list[Key]
    refs: list[int]  # children's logical addresses (level > 0), or item data offsets in raw
    sizes: list[int]  # item data sizes (leaves)
    raw: bytes


@dataclass(frozen=True)
class _Entry:
    """What a directory entry names: an inode of this tree, or another subvolume's root."""
    ino: int
    kind: str
    crossing: bool = False


class Btrfs:
    """One single-device btrfs filesystem, given a bounded random read of its device."""

    def __init__(self, read: Callable[[int, int], bytes], size: int, label: str) -> None:
        self._read = read
        self.size = size
        self.label = label
        if size < SUPER_OFFSET + 4096:
            raise self.corrupt("too small to hold a superblock")
        sb = read(SUPER_OFFSET, 4096)
        if sb[0x40:0x48] != MAGIC:
            raise self.corrupt("bad superblock magic")
        root, chunk_root = struct.unpack_from("<QQ", sb, 0x50)
        (num_devices,) = struct.unpack_from("<Q", sb, 0x88)
        self.sectorsize, self.nodesize = struct.unpack_from("<II", sb, 0x90)
        (sys_array_size,) = struct.unpack_from("<I", sb, 0xA0)
        (incompat,) = struct.unpack_from("<Q", sb, 0xBC)
        root_level, chunk_level = sb[0xC6], sb[0xC7]
        (self.devid,) = struct.unpack_from("<Q", sb, 0xC9)
        if incompat & ~PARSED_INCOMPAT:
            raise Unsupported(f"incompatible features {incompat & ~PARSED_INCOMPAT:#x}")
        if num_devices != 1:
            raise Unsupported(f"a filesystem over {num_devices} devices")
        self.fsid = sb[0x23B:0x24B] if incompat & _INCOMPAT_METADATA_UUID else sb[0x20:0x30]
        (total_bytes,) = struct.unpack_from("<Q", sb, 0x70)
        checks.verify(CHECKS, {"sectorsize": self.sectorsize, "nodesize": self.nodesize, "root": root,
                               "chunk_root": chunk_root, "root_level": root_level, "chunk_root_level": chunk_level,
                               "sys_chunk_array_size": sys_array_size, "total_bytes": total_bytes,
                               "partition_bytes": size}, self.corrupt)
        self._cache: dict[int, _Node] = {}
        chunks = {c.logical: c for c in self._sys_chunks(sb[0x32B:0x32B + sys_array_size])}
        self._set_chunks(chunks)
        for key, data in self.items((chunk_root, chunk_level), (_CHUNK_OWNER, _CHUNK_ITEM, 0),
                                     (_CHUNK_OWNER, _CHUNK_ITEM, _MAX_KEY)):
            chunks[key[2]] = self._chunk(key[2], data)
        self._set_chunks(chunks)
        self._root = (root, root_level)

    def subvolumes(self) -> list[Subvolume]:
        """Every subvolume below the top level with its path, as `btrfs subvolume list` shows them."""
        parents: dict[int, tuple[int, int, str]] = {}
        for key, data in self.items(self._root, (_FIRST_FREE, 0, 0), (_LAST_FREE, 255, _MAX_KEY)):
            if key[1] == _ROOT_BACKREF and key[0] not in parents:
                dirid, name = self._root_ref(data)
                parents[key[0]] = (key[2], dirid, name)
        paths: dict[int, str] = {TOP_LEVEL: ""}

        def path(subvol: int, hops: int) -> str:
            if subvol not in paths:
                if hops > _MAX_HOPS or subvol not in parents:
                    raise self.corrupt(f"subvolume {subvol} has no way up to the top level")
                parent, dirid, name = parents[subvol]
                paths[subvol] = posixpath.join(path(parent, hops + 1), self._dir_path(parent, dirid), name)
            return paths[subvol]

        return [Subvolume(s, path(s, 0)) for s in sorted(parents)]

    def default_subvolume(self) -> int:
        """The subvolume a mount without subvol= shows: the root tree directory's "default" entry."""
        for _, data in self.items(self._root, (_ROOT_TREE_DIR, _DIR_ITEM, 0), (_ROOT_TREE_DIR, _DIR_ITEM, _MAX_KEY)):
            for name, location, _ in self.dir_items(data):
                if name == b"default":
                    return location[0]
        return TOP_LEVEL

    def tree(self, subvol: int) -> FsTree:
        for _, data in self.items(self._root, (subvol, _ROOT_ITEM, 0), (subvol, _ROOT_ITEM, _MAX_KEY)):
            if len(data) < 239:
                raise self.corrupt(f"subvolume {subvol}'s root item is {len(data)} bytes")
            (dirid,) = struct.unpack_from("<Q", data, 168)
            (bytenr,) = struct.unpack_from("<Q", data, 176)
            if data[238] >= _MAX_LEVEL:
                raise self.corrupt(f"subvolume {subvol}'s root is at level {data[238]}")
            return FsTree(self, (bytenr, data[238]), dirid, subvol)
        raise self.corrupt(f"no subvolume {subvol}")

    def corrupt(self, why: str) -> GuestInspectionError:
        return GuestInspectionError(f"{self.label}: corrupt btrfs filesystem: {why}")

    def read_logical(self, logical: int, length: int) -> bytes:
        """Bytes at a logical address, through the chunk map; each piece within one chunk."""
        parts = []
        while length > 0:
            at = bisect.bisect_right(self._starts, logical) - 1
            chunk = self._chunks[at] if at >= 0 else None
            if chunk is None or logical >= chunk.logical + chunk.length:
                raise self.corrupt(f"logical address {logical} is in no chunk")
            count = min(length, chunk.logical + chunk.length - logical)
            physical = chunk.physical + logical - chunk.logical
            if physical + count > self.size:
                raise self.corrupt(f"logical address {logical} maps past the end of the device")
            parts.append(self._read(physical, count))
            logical += count
            length -= count
        return b"".join(parts)

    def items(self, root: tuple[int, int], lo: Key, hi: Key) -> Iterator[tuple[Key, bytes]]:
        """(key, data) of every item lo <= key <= hi of the tree rooted at (logical, level)."""
        budget = [_MAX_WALK_NODES]
        yield from self._walk(root[0], root[1], lo, hi, (0, 0, 0), None, budget)

    def _walk(self, logical: int, level: int, lo: Key, hi: Key, floor: Key, ceiling: Key | None,
              budget: list[int]) -> Iterator[tuple[Key, bytes]]:
        """Descend only into children whose key range meets [lo, hi]; each child's keys must lie
        within the range its parent gives it, so no node is reached twice in one walk."""
        budget[0] -= 1
        if budget[0] < 0:
            raise self.corrupt(f"a tree walk reaches more than {_MAX_WALK_NODES} nodes")
        node = self._node(logical, level)
        keys = node.keys
        if keys and (keys[0] < floor or (ceiling is not None and keys[-1] >= ceiling)):
            raise self.corrupt(f"tree node at {logical} holds keys outside its parent's range")
        if level == 0:
            at = bisect.bisect_left(keys, lo)
            while at < len(keys) and keys[at] <= hi:
                yield keys[at], node.raw[node.refs[at]:node.refs[at] + node.sizes[at]]
                at += 1
            return
        for at, key in enumerate(keys):
            upper = keys[at + 1] if at + 1 < len(keys) else ceiling
            if upper is not None and upper <= lo:
                continue
            if key > hi:
                return
            yield from self._walk(node.refs[at], level - 1, lo, hi, key, upper, budget)

    def _node(self, logical: int, level: int) -> _Node:
        node = self._cache.get(logical)
        if node is None:
            node = self._parse(logical)
            if len(self._cache) >= _CACHE_NODES:
                del self._cache[next(iter(self._cache))]
            self._cache[logical] = node
        if node.level != level:
            raise self.corrupt(f"tree node at {logical} is at level {node.level}, its parent says {level}")
        return node

    def _parse(self, logical: int) -> _Node:
        raw = self.read_logical(logical, self.nodesize)
        (bytenr,) = struct.unpack_from("<Q", raw, 0x30)
        (count,) = struct.unpack_from("<I", raw, 0x60)
        level = raw[0x64]
        if raw[0x20:0x30] != self.fsid or bytenr != logical:
            raise self.corrupt(f"no tree node at logical address {logical}")
        width = _KEY_PTR if level else _LEAF_ITEM
        if level >= _MAX_LEVEL or _HEADER + count * width > self.nodesize or (level and not count):
            raise self.corrupt(f"tree node at {logical} claims level {level} with {count} items")
        keys: list[Key] = []
        refs: list[int] = []
        sizes: list[int] = []
        for at in range(_HEADER, _HEADER + count * width, width):
            keys.append(struct.unpack_from("<QBQ", raw, at))
            if level:
                refs.append(struct.unpack_from("<Q", raw, at + 17)[0])
                continue
            offset, size = struct.unpack_from("<II", raw, at + 17)
            start = _HEADER + offset
            if start < _HEADER + count * width or start + size > self.nodesize:
                raise self.corrupt(f"item {len(refs)} of tree node at {logical} lies outside the node")
            refs.append(start)
            sizes.append(size)
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise self.corrupt(f"tree node at {logical} holds keys out of order")
        return _Node(level, keys, refs, sizes, raw)

    def _sys_chunks(self, array: bytes) -> Iterator[_Chunk]:
        pos = 0
        while pos < len(array):
            if pos + 17 + 48 > len(array):
                raise self.corrupt("truncated system chunk array")
            _, kind, logical = struct.unpack_from("<QBQ", array, pos)
            (stripes,) = struct.unpack_from("<H", array, pos + 17 + 44)
            end = pos + 17 + 48 + 32 * stripes
            if kind != _CHUNK_ITEM or end > len(array):
                raise self.corrupt("bad system chunk array")
            yield self._chunk(logical, array[pos + 17:end])
            pos = end

    def _chunk(self, logical: int, item: bytes) -> _Chunk:
        """One chunk's full copy on this device: single, DUP and RAID1* keep one in any stripe."""
        if len(item) < 48:
            raise self.corrupt(f"chunk at {logical} is {len(item)} bytes")
        length, _, _, kind = struct.unpack_from("<QQQQ", item)
        (stripes,) = struct.unpack_from("<H", item, 44)
        if not length or not stripes or 48 + 32 * stripes > len(item) or logical + length > _MAX_KEY:
            raise self.corrupt(f"chunk at {logical} of {length} bytes in {stripes} stripes")
        if kind & _STRIPED and stripes > 1:
            raise Unsupported(f"chunk at {logical} is striped (type {kind:#x})")
        for at in range(48, 48 + 32 * stripes, 32):
            devid, physical = struct.unpack_from("<QQ", item, at)
            if devid == self.devid:
                return _Chunk(logical, length, physical)
        raise Unsupported(f"chunk at {logical} lives on another device")

    def _set_chunks(self, chunks: dict[int, _Chunk]) -> None:
        self._chunks = sorted(chunks.values(), key=lambda c: c.logical)
        self._starts = [c.logical for c in self._chunks]
        for a, b in itertools.pairwise(self._chunks):
            if a.logical + a.length > b.logical:
                raise self.corrupt(f"chunks at {a.logical} and {b.logical} overlap")

    def _root_ref(self, data: bytes) -> tuple[int, str]:
        if len(data) < 18:
            raise self.corrupt("short root backref")
        dirid, _, length = struct.unpack_from("<QQH", data)
        if 18 + length > len(data):
            raise self.corrupt("root backref name past its item")
        return dirid, data[18:18 + length].decode(errors="surrogateescape")

    def _dir_path(self, subvol: int, dirid: int) -> str:
        """A directory's path inside its subvolume, up its INODE_REFs ("" for the subvolume's root)."""
        fs = self.tree(subvol)
        names: list[str] = []
        while dirid != fs.dirid:
            if len(names) > _MAX_HOPS:
                raise self.corrupt(f"directory {dirid} of subvolume {subvol} is too deep or loops")
            ref = next(fs.items((dirid, _INODE_REF, 0), (dirid, _INODE_REF, _MAX_KEY)), None)
            if ref is None or len(ref[1]) < 10:
                raise self.corrupt(f"directory {dirid} of subvolume {subvol} has no parent")
            (length,) = struct.unpack_from("<H", ref[1], 8)
            names.append(ref[1][10:10 + length].decode(errors="surrogateescape"))
            dirid = ref[0][2]
        return "/".join(reversed(names))

    def dir_items(self, data: bytes) -> Iterator[tuple[bytes, Key, int]]:
        """(name, location key, file type) of the entries packed in one DIR_ITEM/DIR_INDEX item."""
        pos = 0
        while pos < len(data):
            if pos + 30 > len(data):
                raise self.corrupt("truncated directory item")
            location: Key = struct.unpack_from("<QBQ", data, pos)
            data_len, name_len = struct.unpack_from("<HH", data, pos + 25)
            end = pos + 30 + name_len + data_len
            if end > len(data) or not name_len:
                raise self.corrupt("directory item past its item")
            yield data[pos + 30:pos + 30 + name_len], location, data[pos + 29]
            pos = end


class FsTree:
    """Tree (guest.fs.tree) over one subvolume; other subvolumes inside it are empty directories."""

    def __init__(self, fs: Btrfs, root: tuple[int, int], dirid: int, subvol: int = TOP_LEVEL) -> None:
        self.fs = fs
        self.root = root
        self.dirid = dirid
        self.subvol = subvol  # which subvolume this tree is, for evidence

    def lstat(self, path: str) -> Node | None:
        entry = self._lookup(path)
        if entry is None:
            return None
        if entry.kind != "symlink":
            return Node(entry.kind)
        return Node("symlink", self._data(entry.ino, _MAX_SYMLINK).decode(errors="replace"))

    def read(self, path: str, limit: int) -> bytes:
        entry = self._lookup(path)
        if entry is None or entry.crossing:
            raise GuestInspectionError(f"{self.fs.label}: {path} vanished")
        return self._data(entry.ino, limit)

    def listdir(self, path: str) -> list[str]:
        entry = self._lookup(path)
        if entry is None or entry.kind != "dir" or entry.crossing:
            return []
        return [name.decode(errors="surrogateescape") for _, data in
                self.items((entry.ino, _DIR_INDEX, 0), (entry.ino, _DIR_INDEX, _MAX_KEY))
                for name, _, _ in self.fs.dir_items(data)]

    def items(self, lo: Key, hi: Key) -> Iterator[tuple[Key, bytes]]:
        return self.fs.items(self.root, lo, hi)

    def _lookup(self, path: str) -> _Entry | None:
        """The entry at an absolute path whose parents are real directories (tree.resolve's job)."""
        entry = _Entry(self.dirid, "dir")
        for part in (c for c in posixpath.normpath(path).split("/") if c):
            if entry.kind != "dir" or entry.crossing:
                return None
            name = part.encode(errors="surrogateescape")
            found = None
            for _, data in self.items((entry.ino, _DIR_ITEM, name_hash(name)), (entry.ino, _DIR_ITEM, name_hash(name))):
                found = next(((loc, kind) for n, loc, kind in self.fs.dir_items(data) if n == name), None)
            if found is None:
                return None
            (ino, key_type, _), kind = found
            if key_type not in (_INODE_ITEM, _ROOT_ITEM):
                raise self.fs.corrupt(f"directory {entry.ino} names a {key_type} key")
            crossing = key_type == _ROOT_ITEM
            entry = _Entry(ino, "dir" if crossing else _KINDS.get(kind, "other"), crossing)
        return entry

    def _data(self, ino: int, limit: int) -> bytes:
        """The first `limit` bytes of a file: holes and preallocated extents read as zeros."""
        inode = next(self.items((ino, _INODE_ITEM, 0), (ino, _INODE_ITEM, 0)), None)
        if inode is None or len(inode[1]) < 160:
            raise self.fs.corrupt(f"inode {ino} has no inode item")
        want = min(limit, struct.unpack_from("<Q", inode[1], 16)[0])
        out = bytearray(want)
        if not want:
            return b""
        # partial overwrites leave extents that use a few KiB of 128 KiB inflated; more than
        # that is a filesystem making a small read inflate without end
        allowed = budget = 64 * want + 4 * _MAX_COMPRESSED
        for key, item in self.items((ino, _EXTENT_DATA, 0), (ino, _EXTENT_DATA, want - 1)):
            start = key[2]
            if len(item) < 21:
                raise self.fs.corrupt(f"inode {ino}: short file extent at {start}")
            _, ram, compression, encryption, other, kind = struct.unpack_from("<QQBBHB", item)
            if encryption or other:
                raise Unsupported(f"inode {ino} is encrypted or encoded")
            if kind == 0:
                data = self._inflate(compression, item[21:], ram, ino) if compression else item[21:]
            elif kind in (1, 2):
                if len(item) < 53:
                    raise self.fs.corrupt(f"inode {ino}: short file extent at {start}")
                disk, disk_bytes, offset, count = struct.unpack_from("<QQQQ", item, 21)
                count = min(count, want - start)
                if kind == 2 or not disk:
                    continue
                if not compression:
                    data = self.fs.read_logical(disk + offset, count)
                else:
                    if disk_bytes > _MAX_COMPRESSED or offset + count > ram:
                        raise self.fs.corrupt(f"inode {ino}: compressed extent at {start} claims {disk_bytes} "
                                              f"bytes on disk, {ram} in memory")
                    budget -= ram
                    if budget < 0:
                        raise self.fs.corrupt(f"inode {ino}: reading {want} bytes inflates more than {allowed}")
                    plain = self._inflate(compression, self.fs.read_logical(disk, disk_bytes), ram, ino)
                    data = plain[offset:offset + count]
            else:
                raise self.fs.corrupt(f"inode {ino}: file extent of type {kind}")
            data = data[:want - start]
            out[start:start + len(data)] = data
        return bytes(out)

    def _inflate(self, compression: int, data: bytes, ram: int, ino: int) -> bytes:
        """An extent's bytes, zero-filled to ram_bytes as the kernel does; never more than ram_bytes."""
        if ram > _MAX_COMPRESSED:
            raise self.fs.corrupt(f"inode {ino}: compressed extent of {ram} bytes")
        import zstandard  # only for a btrfs guest with zstd extents

        try:
            if compression == 1:
                plain = zlib.decompressobj().decompress(data, ram + 1)
            elif compression == 2:
                plain = self._unlzo(data, ram)
            elif compression == 3:
                # one read: it stops at the end of the frame, before the sector's zero padding
                plain = zstandard.ZstdDecompressor(max_window_size=1 << 20).stream_reader(data).read(ram + 1)
            else:
                raise self.fs.corrupt(f"inode {ino}: compression type {compression}")
        except (zlib.error, zstandard.ZstdError, lzo.LzoError) as exc:
            raise self.fs.corrupt(f"inode {ino}: bad compressed extent ({exc})") from exc
        if len(plain) > ram:
            raise self.fs.corrupt(f"inode {ino}: a compressed extent inflates past its {ram} bytes")
        return plain.ljust(ram, b"\0")

    def _unlzo(self, data: bytes, ram: int) -> bytes:
        """btrfs's LZO framing: total length, then (length, LZO1X stream) segments of at most a
        sector's output each, a length never split across a sector boundary (padding skipped)."""
        sector = self.fs.sectorsize
        if len(data) < 4:
            raise lzo.LzoError("no length header")
        (total,) = struct.unpack_from("<I", data)
        if not 4 <= total <= len(data):
            raise lzo.LzoError(f"total length {total} of {len(data)} bytes")
        out = bytearray()
        pos = 4
        while pos < total and len(out) < ram:
            if sector - pos % sector < 4:
                pos += sector - pos % sector
                continue
            (length,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if not length or pos + length > total:
                raise lzo.LzoError(f"segment of {length} bytes at {pos}")
            out += lzo.decompress(data[pos:pos + length], sector)
            if len(out) > ram:
                break
            pos += length
        return bytes(out)


def root_tree(fs: Btrfs) -> tuple[FsTree, str]:
    """The subvolume mounted at / and why: the default one if it holds os-release, else the one
    an /etc/fstab names for / (Fedora: default is the top level, / is subvol=root), else the one
    subvolume holding os-release, else the default with evidence saying nothing decided it."""
    default = fs.default_subvolume()
    subvols = {TOP_LEVEL: ""} | {s.id: s.path for s in fs.subvolumes()}

    def named(subvol: int) -> str:
        return f"subvolume {subvol} ({subvols.get(subvol) or 'top level'})"

    trees = {default: fs.tree(default)}
    if _os_release(trees[default]):
        return trees[default], f"default {named(default)} holds os-release"
    for subvol in [default, *(s for s in subvols if s != default)]:
        trees.setdefault(subvol, fs.tree(subvol))
        fstab = tree.read(trees[subvol], "/etc/fstab")
        target = _fstab_root(fstab[1].decode(errors="replace"), subvols) if fstab else None
        if target is not None:
            return fs.tree(target[0]), f"/etc/fstab of {named(subvol)} mounts {named(target[0])} at / ({target[1]})"
    holders = [s for s in subvols if _os_release(trees[s])]
    if len(holders) == 1:
        return trees[holders[0]], f"{named(holders[0])} is the only one holding os-release"
    return trees[default], (f"default {named(default)}: {len(holders)} subvolumes hold os-release "
                            "and no /etc/fstab names the one at /")


def _os_release(guest: FsTree) -> bool:
    return any(tree.read(guest, p) is not None for p in ("/etc/os-release", "/usr/lib/os-release"))


def _fstab_root(text: str, subvols: dict[int, str]) -> tuple[int, str] | None:
    """(subvolume id, option) from the / line of an fstab, if it names a known btrfs subvolume."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#") or fields[1] != "/" or fields[2] != "btrfs":
            continue
        for option in fields[3].split(","):
            name, _, value = option.partition("=")
            if name == "subvolid" and value.isdigit() and int(value) in subvols:
                return int(value), option
            if name == "subvol":
                wanted = value.strip("/")
                found = next((s for s, p in subvols.items() if p == wanted), None)
                if found is not None:
                    return found, option
    return None


# btrfs_validate_super's checks on what this reader relies on, each relying on the ones before it.
CHECKS = (
    Check(field="sectorsize", rule="a valid filesystem has a power of two from 4 KiB to 64 KiB here",
          holds=lambda f: power_of_two(f["sectorsize"]) and 4096 <= f["sectorsize"] <= 65536),
    Check(field="nodesize", rule="a valid filesystem has a power of two from sectorsize to 64 KiB here",
          holds=lambda f: power_of_two(f["nodesize"]) and f["sectorsize"] <= f["nodesize"] <= 65536),
    Check(field="root", rule="a valid filesystem has a multiple of sectorsize here",
          holds=lambda f: not f["root"] % f["sectorsize"]),
    Check(field="chunk_root", rule="a valid filesystem has a multiple of sectorsize here",
          holds=lambda f: not f["chunk_root"] % f["sectorsize"]),
    Check(field="root_level", rule=f"a valid filesystem has a tree depth below {_MAX_LEVEL} here",
          holds=lambda f: f["root_level"] < _MAX_LEVEL),
    Check(field="chunk_root_level", rule=f"a valid filesystem has a tree depth below {_MAX_LEVEL} here",
          holds=lambda f: f["chunk_root_level"] < _MAX_LEVEL),
    Check(field="sys_chunk_array_size", rule="a valid filesystem has at most 2048 here",
          holds=lambda f: f["sys_chunk_array_size"] <= 2048),
    Check(field="total_bytes", rule="a one-device filesystem fits in its partition's {partition_bytes} bytes",
          holds=lambda f: 0 < f["total_bytes"] <= f["partition_bytes"]),
)
