"""A FAT12/16/32 filesystem (the EFI system partition) read in process over a bounded random
read: no raw copy of the partition, no tool run per file.

The ESP is untrusted input like the rest of the guest: every cluster number is checked against
the volume, every chain for loops, every directory for its entry count and the walk for its
depth; a file is read only as far as asked. What does not add up is a GuestInspectionError
naming the structure.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from imgpipe.errors import GuestInspectionError

Read = Callable[[int, int], bytes]

MAX_DIR_ENTRIES = 4096  # 32-byte slots per directory; an ESP holds a handful
MAX_FILES = 4096  # files listed by one walk
MAX_DEPTH = 16
MAX_READ = 64 << 20  # bytes of one file read at most
_ENTRY = 32
_ATTR_LFN, _ATTR_DIR, _ATTR_VOLUME = 0x0F, 0x10, 0x08
_LOWER_BASE, _LOWER_EXT = 0x08, 0x10  # NT case flags of an 8.3 name
_LFN_CHARS = ((1, 11), (14, 26), (28, 32))


@dataclass(frozen=True)
class FatFile:
    path: str  # "EFI/BOOT/BOOTX64.EFI", long names where the directory has them
    cluster: int
    size: int


class Fat:
    """One FAT volume: its boot sector read and checked on opening, directories on demand."""

    def __init__(self, read: Read, size: int, label: str) -> None:
        self.label = label
        self._read = read
        boot = read(0, 512) if size >= 512 else b""
        if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
            raise self._corrupt("boot sector: no 55AA signature")
        (self.sector, per_cluster, reserved, fats, root_entries, total16, _media, fat16_size,
         ) = struct.unpack_from("<HBHBHHBH", boot, 11)
        total = total16 or int.from_bytes(boot[32:36], "little")
        fat_size = fat16_size or int.from_bytes(boot[36:40], "little")
        if self.sector not in (512, 1024, 2048, 4096) or per_cluster == 0 or per_cluster & (per_cluster - 1) \
                or per_cluster > 128 or reserved == 0 or fats not in (1, 2, 3, 4) or fat_size == 0:
            raise self._corrupt(f"boot sector: impossible geometry (sector {self.sector}, cluster "
                                f"{per_cluster} sectors, {reserved} reserved, {fats} FATs of {fat_size} sectors)")
        if total * self.sector > size:
            raise self._corrupt(f"boot sector: {total} sectors do not fit the {size}-byte partition")
        self.cluster_bytes = per_cluster * self.sector
        self._fat_start = reserved * self.sector
        root_dir_sectors = -(-root_entries * _ENTRY // self.sector)
        first_data = reserved + fats * fat_size + root_dir_sectors
        if first_data >= total:
            raise self._corrupt("boot sector: the FATs and root directory fill the whole volume")
        self._data_start = first_data * self.sector
        self.clusters = (total - first_data) // per_cluster
        self.bits = 12 if self.clusters < 4085 else 16 if self.clusters < 65525 else 32
        if self.bits * (self.clusters + 2) > fat_size * self.sector * 8:
            raise self._corrupt(f"boot sector: a FAT of {fat_size} sectors cannot map {self.clusters} clusters")
        self._root_region = (0, 0)
        self._root_cluster = 0
        if self.bits == 32:
            self._root_cluster = int.from_bytes(boot[44:48], "little")
            if not 2 <= self._root_cluster < self.clusters + 2:
                raise self._corrupt(f"boot sector: root directory cluster {self._root_cluster} is outside "
                                    f"the volume's {self.clusters} clusters")
        else:
            if root_entries == 0 or root_entries > MAX_DIR_ENTRIES:
                raise self._corrupt(f"boot sector: {root_entries} root directory entries")
            self._root_region = ((reserved + fats * fat_size) * self.sector, root_entries * _ENTRY)
        self._fat: dict[int, bytes] = {}  # FAT sector -> its bytes

    def files(self, directory: str) -> list[FatFile]:
        """Every file under `directory` (matched case-insensitively, as FAT does), depth first
        in directory order; [] when it does not exist."""
        found = self._descend(directory)
        if found is None:
            return []
        where, entries = found
        out: list[FatFile] = []
        self._walk(entries, where, 0, out, set())
        return out

    def find(self, path: str) -> FatFile | None:
        """The file at `path` ("EFI/BOOT/BOOTX64.EFI", any case), or None."""
        directory, _, name = path.strip("/").rpartition("/")
        found = self._descend(directory)
        if found is None:
            return None
        where, entries = found
        hit = next((e for e in entries if e[0].lower() == name.lower() and not e[1]), None)
        return FatFile(f"{where}/{hit[0]}".lstrip("/"), hit[2], hit[3]) if hit else None

    def read(self, file: FatFile, length: int, offset: int = 0) -> bytes:
        """Up to `length` bytes of a file from `offset`, following only as much chain as needed."""
        length = max(0, min(length, file.size - offset, MAX_READ))
        if length == 0:
            return b""
        first, last = offset // self.cluster_bytes, (offset + length - 1) // self.cluster_bytes
        chain = self._chain(file.cluster, last + 1, file.path)
        if len(chain) <= last:
            raise self._corrupt(f"its cluster chain ends before its {file.size} bytes", file.path)
        data = b"".join(self._cluster(c) for c in chain[first:last + 1])
        skip = offset - first * self.cluster_bytes
        return data[skip:skip + length]

    def _descend(self, directory: str) -> tuple[str, list[tuple[str, bool, int, int]]] | None:
        """(its path as stored, its entries) of a directory, or None when it does not exist."""
        entries = self._root()
        where = ""
        for name in (c for c in directory.split("/") if c):
            found = next((e for e in entries if e[0].lower() == name.lower() and e[1]), None)
            if found is None:
                return None
            where = f"{where}/{found[0]}".lstrip("/")
            entries = self._directory(found[2], where)
        return where, entries

    def _walk(self, entries: list[tuple[str, bool, int, int]], where: str, depth: int, out: list[FatFile],
              seen: set[int]) -> None:
        if depth > MAX_DEPTH:
            raise self._corrupt(f"directories nested deeper than {MAX_DEPTH}", where)
        for name, is_dir, cluster, size in entries:
            path = f"{where}/{name}".lstrip("/")
            if is_dir:
                if cluster in seen:  # FAT has no hard links: a directory met twice is a loop
                    raise self._corrupt(f"directory cluster {cluster} is listed twice", path)
                seen.add(cluster)
                self._walk(self._directory(cluster, path), path, depth + 1, out, seen)
                continue
            if len(out) >= MAX_FILES:
                raise self._corrupt(f"more than {MAX_FILES} files under it", where)
            out.append(FatFile(path, cluster, size))

    def _root(self) -> list[tuple[str, bool, int, int]]:
        if self.bits == 32:
            return self._directory(self._root_cluster, "")
        start, length = self._root_region
        return self._entries(self._read(start, length), "")

    def _directory(self, cluster: int, path: str) -> list[tuple[str, bool, int, int]]:
        limit = -(-MAX_DIR_ENTRIES * _ENTRY // self.cluster_bytes)
        chain = self._chain(cluster, limit + 1, path)
        if len(chain) > limit:
            raise self._corrupt(f"directory has more than {MAX_DIR_ENTRIES} entries", path)
        return self._entries(b"".join(self._cluster(c) for c in chain), path)

    def _entries(self, raw: bytes, path: str) -> list[tuple[str, bool, int, int]]:
        """(name, is directory, first cluster, size) of each live entry but "." and ".."."""
        found = []
        long: dict[int, str] = {}
        checksum = -1
        for at in range(0, len(raw) - _ENTRY + 1, _ENTRY):
            entry = raw[at:at + _ENTRY]
            if entry[0] == 0:
                break
            if entry[0] == 0xE5:
                long.clear()
                continue
            attr = entry[11]
            if attr == _ATTR_LFN:
                if entry[0] & 0x40:
                    long.clear()
                    checksum = entry[13]
                if entry[13] == checksum and 1 <= entry[0] & 0x1F <= 20:
                    long[entry[0] & 0x1F] = "".join(entry[a:b].decode("utf-16-le", "replace") for a, b in _LFN_CHARS)
                continue
            parts, long = long, {}
            if attr & _ATTR_VOLUME:
                continue
            short = _short_name(entry)
            if short in (".", ".."):
                continue
            name = short
            if parts and checksum == _lfn_checksum(entry[:11]) and sorted(parts) == list(range(1, len(parts) + 1)):
                name = "".join(parts[i] for i in sorted(parts)).split("\0", 1)[0] or short
            if "/" in name:
                raise self._corrupt(f"entry name {name!r} holds a slash", path)
            cluster = int.from_bytes(entry[26:28], "little")
            if self.bits == 32:
                cluster |= int.from_bytes(entry[20:22], "little") << 16
            size = int.from_bytes(entry[28:32], "little")
            is_dir = bool(attr & _ATTR_DIR)
            if cluster or is_dir:  # an empty file has none; a directory always has one
                self._check_cluster(cluster, f"{path}/{name}".lstrip("/"))
            found.append((name, is_dir, cluster, size))
        return found

    def _chain(self, cluster: int, most: int, what: str) -> list[int]:
        """The first `most` clusters of a chain; a cluster met twice is a loop."""
        chain: list[int] = []
        seen: set[int] = set()
        end = 0xFF8 if self.bits == 12 else 0xFFF8 if self.bits == 16 else 0x0FFFFFF8
        while len(chain) < most:
            self._check_cluster(cluster, what)
            if cluster in seen:
                raise self._corrupt(f"cluster chain loops at cluster {cluster}", what)
            seen.add(cluster)
            chain.append(cluster)
            cluster = self._next(cluster)
            if cluster >= end:
                break
        return chain

    def _next(self, cluster: int) -> int:
        if self.bits == 12:
            at = cluster + cluster // 2
            value = int.from_bytes(self._fat_bytes(at, 2), "little")
            return value >> 4 if cluster & 1 else value & 0xFFF
        width = self.bits // 8
        value = int.from_bytes(self._fat_bytes(cluster * width, width), "little")
        return value & 0x0FFFFFFF if self.bits == 32 else value

    def _fat_bytes(self, at: int, length: int) -> bytes:
        out = b""
        for sector in range(at // self.sector, (at + length - 1) // self.sector + 1):
            if sector not in self._fat:
                self._fat[sector] = self._read(self._fat_start + sector * self.sector, self.sector)
            out += self._fat[sector]
        skip = at % self.sector
        return out[skip:skip + length]

    def _cluster(self, cluster: int) -> bytes:
        return self._read(self._data_start + (cluster - 2) * self.cluster_bytes, self.cluster_bytes)

    def _check_cluster(self, cluster: int, what: str) -> None:
        if not 2 <= cluster < self.clusters + 2:
            raise self._corrupt(f"cluster {cluster} is outside the volume's {self.clusters} clusters", what)

    def _corrupt(self, why: str, path: str | None = None) -> GuestInspectionError:
        """Named as the file or directory (`path`, "" for the root) when the damage is in one,
        as the volume when it is in the boot sector."""
        if path is None:
            return GuestInspectionError(f"{self.label}: corrupt FAT filesystem: {why}")
        return GuestInspectionError(f"{self.label} /{path}: {why}")


def _short_name(entry: bytes) -> str:
    base = entry[:8].decode("cp437").rstrip(" ")
    if entry[0] == 0x05:
        base = "\u00e5" + base[1:]  # 0x05 stands for a leading 0xE5
    ext = entry[8:11].decode("cp437").rstrip(" ")
    if entry[12] & _LOWER_BASE:
        base = base.lower()
    if entry[12] & _LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def _lfn_checksum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total
