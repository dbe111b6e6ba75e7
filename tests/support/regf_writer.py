"""A minimal Windows registry hive (regf) writer, for test fixtures: regipy and hivex only read.

Written from the published format description (base block, hbin, nk/vk/lh cells): one hbin
holding every cell, the root key first (regipy takes the first cell of the first hbin as the
root), subkey lists as sorted lh leaves, DWORDs inline, strings in data cells. `build` also
returns each key's cell offsets so a test can damage a hive precisely.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

REG_SZ, REG_EXPAND_SZ, REG_BINARY, REG_DWORD = 1, 2, 3, 4
BASE_BLOCK = 4096
_HBIN_HEADER = 32
_NONE = 0xFFFFFFFF
_FILETIME = 133_000_000_000_000_000  # 2022-06, any fixed time keeps the output reproducible


@dataclass(frozen=True)
class Expand:
    """A REG_EXPAND_SZ value (ImagePath is one: it may hold %SystemRoot%)."""

    text: str


Value = str | int | bytes | Expand


@dataclass
class Key:
    name: str
    values: dict[str, Value] = field(default_factory=dict)
    subkeys: list[Key] = field(default_factory=list)

    def add(self, path: str, values: dict[str, Value] | None = None) -> Key:
        """The key at a backslash path below this one, created as needed; values merged in."""
        key = self
        for name in [p for p in path.split("\\") if p]:
            found = next((k for k in key.subkeys if k.name.upper() == name.upper()), None)
            if found is None:
                found = Key(name)
                key.subkeys.append(found)
            key = found
        key.values.update(values or {})
        return key


@dataclass
class Layout:
    """Cell offsets (relative to the first hbin, as regf stores them) by key path ("\\" is root)."""

    nk: dict[str, int] = field(default_factory=dict)
    subkey_list: dict[str, int] = field(default_factory=dict)


def build(root: Key, file_name: str = "SOFTWARE") -> tuple[bytes, Layout]:
    heap = _Heap()
    layout = Layout()
    _write_key(heap, root, "\\", _NONE, layout, is_root=True)
    hbin = heap.finish()
    return base_block(len(hbin), file_name) + hbin, layout


def base_block(hbins_size: int, file_name: str) -> bytes:
    block = bytearray(BASE_BLOCK)
    struct.pack_into("<4sIIQIIIIIII", block, 0, b"regf", 1, 1, _FILETIME, 1, 5, 0, 1, _HBIN_HEADER,
                     hbins_size, 1)
    name = file_name.encode("utf-16-le")[:64]
    block[48:48 + len(name)] = name
    struct.pack_into("<I", block, 508, checksum(bytes(block)))
    return bytes(block)


def checksum(block: bytes) -> int:
    """XOR of the base block's first 127 dwords; 0 and -1 are reserved, as Windows writes it."""
    value = 0
    for (word,) in struct.iter_unpack("<I", block[:508]):
        value ^= word
    return {0: 1, _NONE: _NONE - 1}.get(value, value)


def lh_hash(name: str) -> int:
    value = 0
    for char in name.upper():
        value = (value * 37 + ord(char)) & 0xFFFFFFFF
    return value


class _Heap:
    """Allocated cells, back to back after the hbin header; offsets as regf stores them."""

    def __init__(self) -> None:
        self.data = bytearray()

    def alloc(self, payload: int) -> int:
        size = (4 + payload + 7) & ~7
        offset = _HBIN_HEADER + len(self.data)
        self.data += struct.pack("<i", -size) + bytes(size - 4)
        return offset

    def put(self, offset: int, payload: bytes) -> None:
        start = offset - _HBIN_HEADER + 4
        self.data[start:start + len(payload)] = payload

    def cell(self, payload: bytes) -> int:
        offset = self.alloc(len(payload))
        self.put(offset, payload)
        return offset

    def finish(self) -> bytes:
        used = _HBIN_HEADER + len(self.data)
        size = -(-used // 4096) * 4096
        free = size - used
        tail = struct.pack("<i", free) + bytes(free - 4) if free else b""
        header = struct.pack("<4sIIIIQI", b"hbin", 0, size, 0, 0, _FILETIME, 0)
        return header + bytes(self.data) + tail


def _encode_name(name: str) -> tuple[bytes, bool]:
    try:
        return name.encode("ascii"), True
    except UnicodeEncodeError:
        return name.encode("utf-16-le"), False


def _write_key(heap: _Heap, key: Key, path: str, parent: int, layout: Layout, *, is_root: bool = False) -> int:
    name, compressed = _encode_name(key.name)
    nk = heap.alloc(76 + len(name))
    layout.nk[path] = nk
    values = _write_values(heap, key.values)
    children = sorted(key.subkeys, key=lambda k: k.name.upper())
    subkey_list = _NONE
    if children:
        subkey_list = heap.alloc(4 + 8 * len(children))
        layout.subkey_list[path] = subkey_list
        offsets = [_write_key(heap, child, path.rstrip("\\") + "\\" + child.name, nk, layout) for child in children]
        entries = b"".join(struct.pack("<II", off, lh_hash(child.name)) for off, child in zip(offsets, children))
        heap.put(subkey_list, b"lh" + struct.pack("<H", len(children)) + entries)
    flags = (0x20 if compressed else 0) | (0x2C if is_root else 0)
    largest_name = max((len(c.name) * 2 for c in children), default=0)
    largest_value = max((len(n) * 2 for n in key.values), default=0)
    heap.put(nk, b"nk" + struct.pack(
        "<HQ15IHH", flags, _FILETIME, 0, parent, len(children), 0, subkey_list, _NONE,
        len(key.values), values, _NONE, _NONE, largest_name, 0, largest_value, 0, 0, len(name), 0) + name)
    return nk


def _write_values(heap: _Heap, values: dict[str, Value]) -> int:
    if not values:
        return _NONE
    offsets = [_write_value(heap, name, value) for name, value in values.items()]
    return heap.cell(b"".join(struct.pack("<I", off) for off in offsets))


def _write_value(heap: _Heap, name: str, value: Value) -> int:
    raw_name, compressed = _encode_name(name)
    if isinstance(value, int):
        kind, size, data_offset = REG_DWORD, 0x80000004, value
    else:
        kind, data = _typed(value)
        size, data_offset = len(data), heap.cell(data)
    return heap.cell(b"vk" + struct.pack("<HIIIHH", len(raw_name), size, data_offset, kind,
                                         1 if compressed else 0, 0) + raw_name)


def _typed(value: str | bytes | Expand) -> tuple[int, bytes]:
    if isinstance(value, Expand):
        return REG_EXPAND_SZ, (value.text + "\0").encode("utf-16-le")
    if isinstance(value, str):
        return REG_SZ, (value + "\0").encode("utf-16-le")
    return REG_BINARY, value


def append_cells(hive: bytes, payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """`hive` with one more hbin holding `payloads` as allocated cells, and their offsets."""
    start = len(hive) - BASE_BLOCK
    heap = _Heap()
    offsets = [start + heap.cell(payload) for payload in payloads]
    hbin = bytearray(heap.finish())
    struct.pack_into("<I", hbin, 4, start)
    block = bytearray(hive[:BASE_BLOCK])
    struct.pack_into("<I", block, 40, start + len(hbin))
    struct.pack_into("<I", block, 508, checksum(bytes(block)))
    return bytes(block) + hive[BASE_BLOCK:] + bytes(hbin), offsets


def nk_field(nk: int, name: str) -> int:
    """File offset of a field of the nk cell at `nk`, for tests that damage a key."""
    return BASE_BLOCK + nk + 4 + {"subkey_count": 20, "subkeys_list_offset": 28, "values_count": 36}[name]
