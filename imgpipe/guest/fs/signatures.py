"""Filesystem type from its on-disk magic, for partitions whose GPT/MBR type does not say."""

from __future__ import annotations

# (offset, magic, name); ext2/3/4 share one magic and are told apart by feature flags.
MAGIC = [
    (1080, b"\x53\xef", "ext"),
    (0, b"XFSB", "xfs"),
    (65600, b"_BHRfS_M", "btrfs"),
    (3, b"NTFS    ", "ntfs"),
    (82, b"FAT32   ", "vfat"),
    (54, b"FAT1", "vfat"),
]
PROBE_BYTES = 65600 + 8
_EXT4_INCOMPAT = 0x0040 | 0x0080 | 0x0200  # extents, 64bit, flex_bg
_EXT3_COMPAT_JOURNAL = 0x0004


def filesystem(head: bytes) -> str | None:
    """ext2/ext3/ext4/xfs/btrfs/ntfs/vfat, or None when no known magic is present."""
    for offset, magic, name in MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return _ext_flavour(head) if name == "ext" else name
    return None


def _ext_flavour(head: bytes) -> str:
    compat = int.from_bytes(head[1024 + 92:1024 + 96], "little")
    incompat = int.from_bytes(head[1024 + 96:1024 + 100], "little")
    if incompat & _EXT4_INCOMPAT:
        return "ext4"
    return "ext3" if compat & _EXT3_COMPAT_JOURNAL else "ext2"
