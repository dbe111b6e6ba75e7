"""Named hostile disks: each one a way to make `imgpipe inspect` exhaust the machine or crash,
built small (sparse, compressed qcow2) and kept as a regression fixture (issue 20).

One builder per case; HOSTILE maps its name to the builder. Each is what an attacker would
hand over: a real filesystem made by its own mkfs, then a few of its fields rewritten (and
its checksum recomputed, so the reader gets past it, as the kernel would).
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def ext4_superblock_csum(sb: bytes) -> int:
    """ext4's s_checksum: crc32c seeded with ~0 over the first 1020 bytes, not inverted."""
    crc = 0xFFFFFFFF
    for byte in sb[:0x3FC]:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _run(*argv: str | Path, stdin: bytes | None = None) -> None:
    proc = subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: {proc.stderr.decode(errors='replace')}"


def _patch_ext_superblock(raw: Path, fs_offset: int, **fields: int) -> None:
    """Rewrite named superblock fields of the ext4 at fs_offset and recompute its checksum."""
    where = {"s_blocks_per_group": (32, "<I"), "s_desc_size": (254, "<H"), "s_inodes_per_group": (40, "<I"),
             "s_log_groups_per_flex": (372, "<B")}
    with raw.open("r+b") as f:
        f.seek(fs_offset + 1024)
        sb = bytearray(f.read(1024))
        for name, value in fields.items():
            offset, fmt = where[name]
            struct.pack_into(fmt, sb, offset, value)
        if struct.unpack_from("<I", sb, 100)[0] & 0x400:  # metadata_csum
            struct.pack_into("<I", sb, 0x3FC, ext4_superblock_csum(bytes(sb)))
        f.seek(fs_offset + 1024)
        f.write(sb)


def ext_group_descriptors(dest: Path) -> Path:
    """Issue 20's first paragraph: a qcow2 of a 64 GiB disk whose one partition holds an ext4
    (mkfs.ext4 over the whole partition, lazily initialised: a few MiB of data) whose superblock
    says s_blocks_per_group=1 and s_desc_size=512. Read as written that is 16 million groups
    and an 8 GiB group-descriptor table, which the kernel's ext4_fill_super refuses."""
    raw = dest.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(64 * GIB)
    _run("sfdisk", "-q", raw, stdin=f"label: gpt\nstart=2048, type={LINUX_TYPE}, name=root\n".encode())
    part = 2048 * 512
    size = 64 * GIB - part - MIB  # up to the backup GPT
    _run("mkfs.ext4", "-q", "-F", "-E", f"offset={part},lazy_itable_init=1,lazy_journal_init=1", raw,
         f"{size // 1024}k")
    _patch_ext_superblock(raw, part, s_blocks_per_group=1, s_desc_size=512)
    _run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, dest)
    raw.unlink()
    return dest


# Name -> builder; a test runs `imgpipe inspect` on each and requires exit 20 inside the limits.
HOSTILE: dict[str, Callable[[Path], Path]] = {
    "ext-group-descriptors": ext_group_descriptors,
}
