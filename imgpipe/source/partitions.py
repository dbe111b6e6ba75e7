"""GPT/MBR partition tables, read from the first sectors of a disk image.

Needed to find the root filesystem for LXC/UML targets, which boot a bare filesystem.
Assumes 512-byte logical sectors, as every cloud image uses.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

SECTOR = 512
# How much of the disk the caller must provide: MBR + GPT header + 128 entries fit in 17 KiB.
HEAD_BYTES = 1 << 20

LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
ROOT_TYPES = {
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "linux-root-x86-64",
    "b921b045-1df0-41c3-af44-4c6f280d3fae": "linux-root-arm64",
    "44479540-f297-41b2-9af7-d131d5f0458a": "linux-root-x86",
}
GPT_KINDS = {
    LINUX_FS: "linux",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "efi",
    "21686148-6449-6e6f-744e-656564454649": "bios-boot",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "swap",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "xbootldr",
    **ROOT_TYPES,
}
MBR_KINDS = {0x83: "linux", 0xEF: "efi", 0x82: "swap", 0x0B: "fat32", 0x0C: "fat32", 0x07: "ntfs"}
MBR_EXTENDED = {0x05, 0x0F, 0x85}


@dataclass(frozen=True)
class Partition:
    number: int
    start: int
    size: int
    type: str
    kind: str
    name: str = ""


class PartitionTableError(ValueError):
    pass


def parse(head: bytes, disk_size: int) -> tuple[str | None, list[Partition]]:
    """Return ("gpt"|"mbr"|None, partitions) from the first HEAD_BYTES of a disk."""
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        return None, []
    entries = [struct.unpack_from("<B3sB3sII", head, 446 + 16 * i) for i in range(4)]
    if any(e[2] == 0xEE for e in entries):
        return "gpt", _parse_gpt(head, disk_size)
    parts = []
    for number, (_, _, ptype, _, lba, count) in enumerate(entries, start=1):
        if ptype == 0 or count == 0:
            continue
        if ptype in MBR_EXTENDED:
            raise PartitionTableError("extended/logical MBR partitions are not supported")
        parts.append(Partition(number, lba * SECTOR, count * SECTOR, f"0x{ptype:02x}",
                               MBR_KINDS.get(ptype, "other")))
    _check_bounds(parts, disk_size)
    return "mbr", parts


def _parse_gpt(head: bytes, disk_size: int) -> list[Partition]:
    header = head[SECTOR:2 * SECTOR]
    if header[:8] != b"EFI PART":
        raise PartitionTableError("protective MBR without a GPT header")
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    start, end = entries_lba * SECTOR, entries_lba * SECTOR + count * entry_size
    if entry_size < 128 or end > len(head):
        raise PartitionTableError("GPT partition entries lie outside the first MiB")
    parts = []
    for i in range(count):
        raw = head[start + i * entry_size:start + (i + 1) * entry_size]
        type_guid = str(uuid.UUID(bytes_le=raw[:16]))
        if type_guid == "00000000-0000-0000-0000-000000000000":
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", errors="replace").rstrip("\x00")
        parts.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, type_guid,
                               GPT_KINDS.get(type_guid, "other"), name))
    _check_bounds(parts, disk_size)
    return parts


def _check_bounds(parts: list[Partition], disk_size: int) -> None:
    for p in parts:
        if p.size <= 0 or p.start + p.size > disk_size:
            raise PartitionTableError(f"partition {p.number} extends past the end of the disk")


def root_partition(parts: list[Partition]) -> Partition:
    """The partition an LXC/UML guest boots as its root: a typed root, else the largest Linux one."""
    typed = [p for p in parts if p.type in ROOT_TYPES]
    linux = typed or [p for p in parts if p.kind == "linux"]
    if not linux:
        raise PartitionTableError("no Linux filesystem partition found")
    return max(linux, key=lambda p: p.size)
