"""The fuzzer's targets (imgpipe_dev.fuzz): one base disk per reader, built by the tests' own
fixture builders, and the structures on it that mutations aim at.

Every base is a sparse 64 GiB raw GPT disk holding 1 to 65 MiB of data (NTFS's $LogFile is
the most): an ESP made by mkfs.vfat + mtools, and a root filesystem made by its own mkfs (ext4
-d, xfs -p, btrfs on a loop mount, NTFS through ntfs-3g with hives from regf_writer, an LVM2 PV
written by lvm) in a partition running to the end of the disk. The MBR target keeps a small
ext4 (1 KiB blocks); the container targets are the ext disk converted by qemu-img to qcow2,
vmdk and vhd.

Where the structures are is read at build time with the format's own tools (debugfs, xfs_db,
lvm's layout) or from the on-disk headers, never guessed by the reader under test.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import BinaryIO

import btrfs_fixture as bf
import family_disks as fd
import hostile_disks as hd
import lvm_disks as ld
import windows_fixture as wf
import xfs_fixtures as xf

from imgpipe_dev import fuzz
from imgpipe_dev.fuzz import Base, Field, Region, Target

MIB = 1 << 20
DISK_MIB = 64 << 10  # 64 GiB virtual, as in issue 20's "Done when"
ESP_MIB = 34
# The last partition runs to the end of the disk (less 1 MiB at each end: the GPTs), so a
# filesystem's geometry is that of a 64 GiB one and claims up to the partition's size are legal.
REST_MIB = DISK_MIB - 2 - ESP_MIB
HERE = Path(__file__).resolve().parent
# What the bases are built by (hostile_disks only lends the ext checksums to a case's fixup).
BUILDERS = tuple(HERE / name for name in ("fuzz_targets.py", "family_disks.py", "lvm_disks.py", "xfs_fixtures.py",
                                          "btrfs_fixture.py", "windows_fixture.py", "regf_writer.py"))
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
KERNEL = "6.1.0-28-amd64"


def _run(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: {proc.stderr}"
    return proc.stdout


def _u(width: int, *names: tuple[str, int], big: bool = False) -> tuple[Field, ...]:
    return tuple(Field(name, offset, width, big) for name, offset in names)


def _fields(*groups: tuple[Field, ...], big: bool = False) -> tuple[Field, ...]:
    return tuple(Field(f.name, f.offset, f.width, big) for g in groups for f in g)


def _hot(fields: tuple[Field, ...], *names: str, weight: float = 4.0) -> tuple[Field, ...]:
    """The geometry fields among `fields` chosen `weight` times as often: the sizes and counts a
    reader multiplies (issue 20's blow-up is s_blocks_per_group and s_desc_size)."""
    assert set(names) <= {f.name for f in fields}, set(names) - {f.name for f in fields}
    return tuple(Field(f.name, f.offset, f.width, f.big, weight if f.name in names else f.weight) for f in fields)


# Partition tables --------------------------------------------------------------------------------

MBR_ENTRY = _fields(_u(1, ("status", 0), ("type", 4)), _u(4, ("lba", 8), ("sectors", 12)))
GPT_HEADER = _fields(_u(4, ("revision", 8), ("header_size", 12), ("entries", 80), ("entry_size", 84)),
                     _u(8, ("my_lba", 24), ("alternate_lba", 32), ("first_usable", 40), ("last_usable", 48),
                           ("entries_lba", 72)))
GPT_ENTRY = _fields(_u(8, ("first_lba", 32), ("last_lba", 40), ("attributes", 48)), _u(1, ("type0", 0)))


def table_regions(disk: Path) -> list[Region]:
    with disk.open("rb") as f:
        head = f.read(34 * 512)
    regions = [Region(f"mbr.entry{i}", 446 + 16 * i, 16, MBR_ENTRY) for i in range(4)
               if head[446 + 16 * i + 4]]
    if head[512:520] == b"EFI PART":
        regions.append(Region("gpt.header", 512, 92, GPT_HEADER, weight=2))
        for i in range(struct.unpack_from("<I", head, 512 + 80)[0]):
            if head[1024 + 128 * i:1024 + 128 * i + 16].strip(b"\0"):
                regions.append(Region(f"gpt.entry{i}", 1024 + 128 * i, 128, GPT_ENTRY))
    return regions


# FAT (the ESP) -----------------------------------------------------------------------------------

FAT_BPB = _fields(_u(2, ("bytes_per_sector", 11), ("reserved", 14), ("root_entries", 17), ("total16", 19),
                     ("fat_size16", 22)),
                  _u(1, ("sectors_per_cluster", 13), ("fats", 16), ("media", 21)),
                  _u(4, ("total32", 32), ("fat_size32", 36), ("root_cluster", 44)))
DIRENT = _u(2, ("cluster_hi", 20), ("cluster_lo", 26)) + _u(4, ("size", 28)) + _u(1, ("attr", 11), ("name0", 0))


def fat_regions(disk: Path, start: int, label: str = "esp") -> list[Region]:
    with disk.open("rb") as f:
        f.seek(start)
        boot = f.read(512)
        per_sector, per_cluster, reserved, fats, root_entries = struct.unpack_from("<HBHBH", boot, 11)
        fat16 = struct.unpack_from("<H", boot, 22)[0]
        fat_size = fat16 or struct.unpack_from("<I", boot, 36)[0]
        fat_at = start + reserved * per_sector
        root_at = fat_at + fats * fat_size * per_sector
        data_at = root_at + (root_entries * 32 + per_sector - 1) // per_sector * per_sector
        cluster = per_sector * per_cluster
        if fat16:
            dirs_at = [root_at]
        else:
            root_cluster = struct.unpack_from("<I", boot, 44)[0]
            dirs_at = [data_at + (root_cluster - 2) * cluster]
        regions = [Region(f"{label}.boot", start, 512, FAT_BPB, weight=3),
                   Region(f"{label}.fat", fat_at, 512, _u(4 if not fat16 else 2, *((f"fat{i}", i * (2 if fat16 else 4))
                                                                                   for i in range(2, 16)))),
                   ]
        # the root directory and one level below (EFI, EFI/BOOT): their entries point at clusters
        for depth in range(3):
            f.seek(dirs_at[-1])
            block = f.read(cluster)
            fields: list[Field] = []
            child = None
            for i in range(min(16, len(block) // 32)):
                entry = block[32 * i:32 * i + 32]
                if entry[0] in (0, 0xE5) or entry[11] == 0x0F:
                    continue
                fields += [Field(f"{entry[:11].decode(errors='replace').strip()}.{d.name}", 32 * i + d.offset,
                                 d.width) for d in DIRENT]
                if entry[11] & 0x10 and entry[0] != ord(".") and child is None:
                    child = (struct.unpack_from("<H", entry, 20)[0] << 16) | struct.unpack_from("<H", entry, 26)[0]
            regions.append(Region(f"{label}.dir{depth}", dirs_at[-1], min(cluster, 512), tuple(fields), weight=2))
            if child is None:
                break
            dirs_at.append(data_at + (child - 2) * cluster)
    return regions


# ext2/3/4 ----------------------------------------------------------------------------------------

EXT_SUPER = _hot(_fields(
    _u(4, ("s_inodes_count", 0), ("s_blocks_count_lo", 4), ("s_first_data_block", 20), ("s_log_block_size", 24),
       ("s_blocks_per_group", 32), ("s_inodes_per_group", 40), ("s_rev_level", 76), ("s_first_ino", 84),
       ("s_feature_compat", 92), ("s_feature_incompat", 96), ("s_feature_ro_compat", 100),
       ("s_blocks_count_hi", 336)),
    _u(2, ("s_inode_size", 88), ("s_desc_size", 254), ("s_reserved_gdt_blocks", 206)),
    _u(1, ("s_log_groups_per_flex", 372))),
    "s_blocks_count_lo", "s_log_block_size", "s_blocks_per_group", "s_inodes_per_group", "s_inode_size",
    "s_desc_size", "s_log_groups_per_flex")
EXT_DESC = _fields(_u(4, ("bg_block_bitmap", 0), ("bg_inode_bitmap", 4), ("bg_inode_table", 8),
                      ("bg_inode_table_hi", 40)),
                   _u(2, ("bg_flags", 18), ("bg_itable_unused", 28)))
EXT_INODE = _fields(
    _u(2, ("i_mode", 0), ("i_links_count", 26), ("eh_magic", 40), ("eh_entries", 42), ("eh_max", 44),
       ("eh_depth", 46), ("ee_len", 56), ("ee_start_hi", 58), ("i_extra_isize", 128)),
    _u(4, ("i_size_lo", 4), ("i_blocks_lo", 28), ("i_flags", 32), ("ee_block", 52), ("ee_start_lo", 60),
       ("i_size_high", 108), ("i_block1", 64)))


def ext_regions(image: Path, start: int, paths: tuple[str, ...], label: str = "ext") -> list[Region]:
    """Superblock, group descriptors, the inodes of `paths` and their first blocks (directories)."""
    with image.open("rb") as f:
        f.seek(1024)
        sb = f.read(1024)
    block = 1024 << struct.unpack_from("<I", sb, 24)[0]
    desc = struct.unpack_from("<H", sb, 254)[0] if struct.unpack_from("<I", sb, 96)[0] & 0x80 else 32
    gdt = (2048 if block == 1024 else block)
    regions = [Region(f"{label}.superblock", start + 1024, 1024, EXT_SUPER, weight=6),
               Region(f"{label}.gdt", start + gdt, min(4 * desc, block),
                      tuple(Field(f"g{g}.{d.name}", g * desc + d.offset, d.width) for g in range(2) for d in EXT_DESC),
                      weight=2)]
    inode_size = struct.unpack_from("<H", sb, 88)[0]
    for path in paths:
        where = _run("debugfs", "-R", f"imap {path}", image)
        m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", where)
        assert m, where
        at = int(m[1]) * block + int(m[2], 16)
        regions.append(Region(f"{label}.inode[{path}]", start + at, inode_size, EXT_INODE, weight=2))
        blocks = _run("debugfs", "-R", f"blocks {path}", image).split()
        if blocks and path != "/etc/os-release":
            at = int(blocks[0]) * block
            regions.append(Region(f"{label}.dirblock[{path}]", start + at, min(block, 4096),
                                  ext_dirents(image, at, block)))
    return regions


def ext_dirents(image: Path, at: int, block: int) -> tuple[Field, ...]:
    with image.open("rb") as f:
        f.seek(at)
        data = f.read(block)
    fields: list[Field] = []
    pos = 0
    for i in range(8):
        if pos + 8 > len(data):
            break
        rec_len = struct.unpack_from("<H", data, pos + 4)[0]
        fields += [Field(f"d{i}.inode", pos, 4), Field(f"d{i}.rec_len", pos + 4, 2),
                   Field(f"d{i}.name_len", pos + 6, 1), Field(f"d{i}.file_type", pos + 7, 1)]
        if rec_len < 8:
            break
        pos += rec_len
    if data[0x18:0x1C] == b"\0\0\0\0" and data[0x1C] == 0:  # an htree root: dx_root_info and its limits
        fields += [Field("dx.hash_version", 0x1C, 1), Field("dx.info_length", 0x1D, 1), Field("dx.levels", 0x1E, 1),
                   Field("dx.limit", 0x20, 2), Field("dx.count", 0x22, 2), Field("dx.block0", 0x24, 4)]
    return tuple(fields)


def ext_fixup(f: BinaryIO, b: Base) -> None:
    """With metadata_csum, the superblock's and the first group descriptors' checksums as mke2fs
    would write them for the mutated values (ext_blocks does not check them, debugfs does)."""
    for region in b.regions:
        if not region.name.endswith(".superblock"):
            continue
        f.seek(region.offset)
        sb = bytearray(f.read(1024))
        if not struct.unpack_from("<I", sb, 100)[0] & 0x400:
            continue
        gdt = _region(b, region.name.replace(".superblock", ".gdt"))
        desc = struct.unpack_from("<H", sb, 254)[0] if struct.unpack_from("<I", sb, 96)[0] & 0x80 else 32
        if 32 <= desc <= gdt.length:
            f.seek(gdt.offset)
            table = bytearray(f.read(gdt.length))
            for group in range(gdt.length // desc):
                entry = bytes(table[group * desc:(group + 1) * desc])
                struct.pack_into("<H", table, group * desc + 0x1E, hd.ext4_desc_csum(bytes(sb), group, entry))
            f.seek(gdt.offset)
            f.write(table)
        struct.pack_into("<I", sb, 0x3FC, hd.ext4_superblock_csum(bytes(sb)))
        f.seek(region.offset)
        f.write(sb)


def lvm_and_ext_fixup(f: BinaryIO, b: Base) -> None:
    lvm_fixup(f, b)
    ext_fixup(f, b)


def _esp(work: Path, loaders: dict[str, bytes] | None = None, mib: int = 34) -> Path:
    return fd.esp(work / "esp.img", loaders, mib=mib)


def _linux_tree(root: Path, os_release: str = DEBIAN) -> Path:
    tree = fd.linux_tree(root, os_release, KERNEL, ("virtio_blk", "virtio_scsi", "ahci"), usrmerge=True)
    fd._write(tree / "boot" / f"vmlinuz-{KERNEL}", b"MZ" + bytes(510) + b"HdrS")
    return tree


def _gpt_disk(work: Path, parts: list[tuple[str, str, int, Path | None]]) -> tuple[Path, list[ld.Part]]:
    disk = work / "disk.raw"
    layout = ld.gpt(disk, DISK_MIB, [(name, kind, mib) for name, kind, mib, _ in parts])
    with disk.open("r+b") as f:
        f.write(fd.sample_disk.GRUB_LIKE_MBR)
    for (_, _, _, image), where in zip(parts, layout, strict=True):
        if image is not None:
            fd.sample_disk._copy_into(image, disk, where.offset)
    return disk, layout


def build_ext(work: Path) -> tuple[Path, list[Region]]:
    """Debian-like: ESP (FAT32) and a 64 GiB ext4 root (mkfs.ext4 -d, 4 KiB blocks, an htree /usr/bin)."""
    root = work / "root.img"
    _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", _linux_tree(work / "tree"),
         root, f"{REST_MIB}M")
    disk, layout = _gpt_disk(work, [("efi", ld.ESP_TYPE, ESP_MIB, _esp(work)),
                                    ("root", ld.LINUX_TYPE, REST_MIB, root)])
    paths = ("/", "/etc", "/etc/os-release", "/usr/bin", "/usr/lib/modules")
    return disk, [*table_regions(disk), *fat_regions(disk, layout[0].offset),
                  *ext_regions(root, layout[1].offset, paths)]


def build_mbr(work: Path) -> tuple[Path, list[Region]]:
    """An MBR disk (primary partitions: imgpipe refuses logical ones): a FAT16 ESP (type ef) and
    a small ext4 with 1 KiB blocks."""
    esp = _fat16(work / "esp.img")
    tree = _linux_tree(work / "tree")
    root = work / "root.img"
    _run("mkfs.ext4", "-q", "-F", "-d", tree, root, "48M")
    disk = work / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(DISK_MIB * MIB)
    table = "label: dos\nstart=2048, size=32768, type=ef\nstart=38912, size=98304, type=83\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=table.encode(), check=True)
    with disk.open("r+b") as f:
        f.write(fd.sample_disk.GRUB_LIKE_MBR)
    fd.sample_disk._copy_into(esp, disk, 2048 * 512)
    fd.sample_disk._copy_into(root, disk, 38912 * 512)
    return disk, [*table_regions(disk), *fat_regions(disk, 2048 * 512),
                  *ext_regions(root, 38912 * 512, ("/", "/etc", "/etc/os-release", "/usr/bin"))]


def _fat16(image: Path) -> Path:
    with image.open("wb") as f:
        f.truncate(16 * MIB)
    _run("mkfs.vfat", image)
    loader = image.parent / "BOOTX64.EFI"
    loader.write_bytes(fd.sample_disk.PE_X86_64)
    _run("mmd", "-i", image, "::/EFI", "::/EFI/BOOT")
    _run("mcopy", "-i", image, loader, "::/EFI/BOOT/BOOTX64.EFI")
    return image


# xfs ---------------------------------------------------------------------------------------------

XFS_SB = _hot(_fields(
    _u(4, ("sb_blocksize", 4), ("sb_agblocks", 84), ("sb_agcount", 88), ("sb_features2", 200),
       ("sb_features_incompat", 216), ("sb_logblocks", 96)),
    _u(8, ("sb_dblocks", 8), ("sb_rootino", 56), ("sb_logstart", 48), ("sb_icount", 128)),
    _u(2, ("sb_versionnum", 100), ("sb_sectsize", 102), ("sb_inodesize", 104), ("sb_inopblock", 106)),
    _u(1, ("sb_blocklog", 120), ("sb_sectlog", 121), ("sb_inodelog", 122), ("sb_inopblog", 123),
       ("sb_agblklog", 124), ("sb_dirblklog", 192)), big=True),
    "sb_blocksize", "sb_dblocks", "sb_agblocks", "sb_agcount", "sb_inodesize", "sb_inopblock", "sb_dirblklog",
    "sb_agblklog")
XFS_AGI = _u(4, ("agi_length", 12), ("agi_count", 16), ("agi_root", 20), ("agi_level", 24), ("agi_newino", 32),
             ("agi_unlinked0", 40), ("agi_free_root", 320), ("agi_free_level", 324), big=True)
XFS_AGF = _u(4, ("agf_length", 12), ("agf_bno_root", 16), ("agf_cnt_root", 20), ("agf_bno_level", 28),
             ("agf_flfirst", 40), ("agf_fllast", 44), ("agf_flcount", 48), big=True)
XFS_INODE = _fields(
    _u(2, ("di_magic", 0), ("di_mode", 2), ("di_anextents", 80), ("di_flags", 90), ("bmbt_level", 176),
       ("bmbt_numrecs", 178)),
    _u(1, ("di_version", 4), ("di_format", 5), ("di_forkoff", 82), ("di_aformat", 83), ("sf_count", 176),
       ("sf_i8count", 177)),
    _u(4, ("di_nlink", 16), ("di_extsize", 72), ("di_nextents", 76), ("lit_u32", 180)),
    _u(8, ("di_size", 56), ("di_nblocks", 64), ("di_flags2", 120), ("extent0_hi", 176), ("extent0_lo", 184)),
    big=True)
XFS_DIRBLOCK = _fields(_u(4, ("magic", 0), ("tail_count", 4088), ("tail_stale", 4092)),
                       _u(2, ("bestfree0_offset", 48), ("bestfree0_length", 50), ("leaf_count", 56),
                          ("leaf_stale", 58), ("e0_tag", 78)),
                       _u(8, ("e0_inumber", 64)), _u(1, ("e0_namelen", 72)), big=True)


def _xfs_byte(image: Path, what: str) -> int:
    return int(xf.db(image, f"convert {what} byte").split()[0], 16)


def xfs_regions(image: Path, start: int, paths: tuple[str, ...], label: str = "xfs") -> list[Region]:
    sect = int(xf.db(image, "sb 0", "print sectsize").split("=")[1])
    regions = [Region(f"{label}.sb", start, 512, XFS_SB, weight=4),
               Region(f"{label}.agf", start + sect, 512, XFS_AGF, weight=2),
               Region(f"{label}.agi", start + 2 * sect, 512, XFS_AGI, weight=2)]
    leaf = (32 << 30) // 4096  # XFS_DIR2_LEAF_OFFSET in 4 KiB directory blocks
    for path in paths:
        ino = xf.inode_number(image, path)
        regions.append(Region(f"{label}.inode[{path}]", start + _xfs_byte(image, f"inode {ino}"), 512, XFS_INODE,
                              weight=2))
        extents = xf.bmap(image, ino)
        for name, ext in (("data", next((e for e in extents if e[0] < leaf), None)),
                          ("leaf", next((e for e in extents if e[0] >= leaf), None))):
            if ext is not None:
                regions.append(Region(f"{label}.dir{name}[{path}]", start + _xfs_byte(image, f"fsblock {ext[1]}"),
                                      4096, XFS_DIRBLOCK))
    return regions


def build_xfs(work: Path) -> tuple[Path, list[Region]]:
    """Rocky-like: ESP and an xfs root (mkfs.xfs -p) with short-form, block, leaf and node directories."""
    root = fd.xfs(work / "root.img", _linux_tree(work / "tree", fd.ROCKY), REST_MIB)
    disk, layout = _gpt_disk(work, [("efi", ld.ESP_TYPE, ESP_MIB, _esp(work)),
                                    ("root", ld.LINUX_TYPE, REST_MIB, root)])
    paths = ("/", "/etc", "/usr/lib", "/usr/bin", "/usr/lib/firmware", f"/usr/lib/modules/{KERNEL}/kernel/drivers/scsi")
    return disk, [*table_regions(disk), *xfs_regions(root, layout[1].offset, paths)]


# btrfs -------------------------------------------------------------------------------------------

BTRFS_SUPER = _hot(_fields(
    _u(8, ("bytenr", 0x30), ("generation", 0x48), ("root", 0x50), ("chunk_root", 0x58), ("log_root", 0x60),
       ("total_bytes", 0x70), ("bytes_used", 0x78), ("root_dir_objectid", 0x80), ("num_devices", 0x88),
       ("incompat_flags", 0xAC), ("chunk.length", 0x33C), ("chunk.stripe_len", 0x34C),
       ("chunk.stripe0_offset", 0x374)),
    _u(4, ("sectorsize", 0x90), ("nodesize", 0x94), ("stripesize", 0x9C), ("sys_chunk_array_size", 0xA0)),
    _u(1, ("root_level", 0xC6), ("chunk_root_level", 0xC7)),
    _u(2, ("chunk.num_stripes", 0x368))),
    "sectorsize", "nodesize", "sys_chunk_array_size", "chunk.length", "chunk.stripe_len", "chunk.num_stripes")


def btrfs_regions(image: Path, start: int, limit: int = 160) -> list[Region]:
    """The superblock and every tree block on the device (found by the fsid in its header)."""
    with image.open("rb") as f:
        f.seek(0x10000)
        sb = f.read(4096)
        fsid, nodesize = sb[0x20:0x30], struct.unpack_from("<I", sb, 0x94)[0]
        regions = [Region("btrfs.super", start + 0x10000, 4096, BTRFS_SUPER, weight=max(4, limit // 10))]
        size = image.stat().st_size
        for pos, _ in _data_extents(image):
            at = (pos + nodesize - 1) // nodesize * nodesize
            while at < size and len(regions) <= limit:
                f.seek(at)
                head = f.read(0x65 + 33 * 4)
                if head[0x20:0x30] != fsid or struct.unpack_from("<Q", head, 0x30)[0] == 0:
                    if head[:8].strip(b"\0") == b"":
                        break
                    at += nodesize
                    continue
                level, items = head[0x64], struct.unpack_from("<I", head, 0x60)[0]
                fields = [*_u(8, ("bytenr", 0x30), ("owner", 0x58)), *_u(4, ("nritems", 0x60)), *_u(1, ("level", 0x64))]
                for i in sorted({0, 1, max(0, items - 1)}):
                    if level:  # key pointers: key (17 bytes), blockptr, generation
                        at_i = 0x65 + 33 * i
                        fields += [Field(f"ptr{i}.objectid", at_i, 8), Field(f"ptr{i}.blockptr", at_i + 17, 8)]
                    else:  # items: key (objectid, type, offset), data offset, data size
                        at_i = 0x65 + 25 * i
                        fields += [Field(f"item{i}.type", at_i + 8, 1), Field(f"item{i}.offset", at_i + 9, 8),
                                   Field(f"item{i}.data_offset", at_i + 17, 4),
                                   Field(f"item{i}.data_size", at_i + 21, 4)]
                owner = struct.unpack_from("<Q", head, 0x58)[0]
                regions.append(Region(f"btrfs.node@{at:#x}(tree {owner}, level {level})", start + at, nodesize,
                                      tuple(fields)))
                at += nodesize
    return regions


def _data_extents(path: Path) -> list[tuple[int, int]]:
    return list(fuzz.extents(path))


def build_btrfs(work: Path) -> tuple[Path, list[Region]]:
    """Fedora-like: ESP and btrfs with subvolumes root and home, zstd/zlib/lzo extents, a crowded
    directory (multi-level trees)."""
    host = bf.fedora_tree(work / "host")
    _linux_tree(host / "root", bf.OS_RELEASE)
    root = bf.fedora(work / "root.img", host, REST_MIB * MIB)
    disk, layout = _gpt_disk(work, [("efi", ld.ESP_TYPE, ESP_MIB, _esp(work)),
                                    ("root", ld.LINUX_TYPE, REST_MIB, root)])
    return disk, [*table_regions(disk), *btrfs_regions(root, layout[1].offset)]


def _needs_root() -> str | None:
    return None if os.geteuid() == 0 and shutil.which("losetup") else "needs root and loop devices"


# LVM2 --------------------------------------------------------------------------------------------

LVM_LABEL = _fields(_u(8, ("sector_xl", 8), ("device_size", 64), ("data0.offset", 72), ("data0.size", 80),
                       ("mda0.offset", 104), ("mda0.size", 112)),
                    _u(4, ("crc_xl", 16), ("offset_xl", 20)))
LVM_MDA = _fields(_u(8, ("start", 24), ("size", 32), ("raw0.offset", 40), ("raw0.size", 48)),
                  _u(4, ("checksum", 0), ("version", 20), ("raw0.checksum", 56), ("raw0.flags", 60)))


def _lvm_crc(data: bytes) -> int:
    return zlib.crc32(data, 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _region(b: Base, prefix: str) -> Region:
    return next(r for r in b.regions if r.name.startswith(prefix))


def lvm_fixup(f: BinaryIO, b: Base) -> None:
    """Recompute the label's, the metadata area header's and the metadata text's checksums, as
    lvm would have written them for the mutated values."""
    label, mda = _region(b, "lvm.label"), _region(b, "lvm.mda")
    f.seek(mda.offset)
    header = bytearray(f.read(512))
    offset, size = struct.unpack_from("<QQ", header, 40)
    if offset >= 512 and 0 < size <= 1 << 20:
        f.seek(mda.offset + offset)
        struct.pack_into("<I", header, 56, _lvm_crc(f.read(size)))
    struct.pack_into("<I", header, 0, _lvm_crc(bytes(header[4:])))
    f.seek(mda.offset)
    f.write(header)
    f.seek(label.offset)
    sector = bytearray(f.read(512))
    struct.pack_into("<I", sector, 16, _lvm_crc(bytes(sector[20:])))
    f.seek(label.offset)
    f.write(sector)


def lvm_text(rng: random.Random, f: BinaryIO, b: Base) -> str:
    """A number of the VG metadata text (extent_size, pe_start, stripe counts, extents) changed."""
    text_region, mda = _region(b, "lvm.text"), _region(b, "lvm.mda")
    f.seek(text_region.offset)
    text = f.read(text_region.length)
    numbers = list(re.finditer(rb"(?<=[= ])-?\d+", text))
    m = rng.choice(numbers)
    value = rng.choice([0, 1, -1, 2, 3, 7, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 64, 10 ** 30,
                        int(m[0]) + 1, int(m[0]) * 1000])
    new = text[:m.start()] + str(value).encode() + text[m.end():]
    f.seek(text_region.offset)
    f.write(new + b"\0" * max(0, len(text) - len(new)))
    f.seek(mda.offset + 48)
    f.write(struct.pack("<Q", len(new)))
    line = text[:m.start()].rsplit(b"\n", 1)[-1].strip().decode(errors="replace")
    return f"lvm.text: {line}{m[0].decode()} -> {value}"


def build_lvm(work: Path) -> tuple[Path, list[Region]]:
    """Rocky-like LVM: ESP and a 64 GiB PV of VG rl (swap, a 64 MiB root on ext4), as lvm2 writes it."""
    root = fd.ext4(work / "root.img", _linux_tree(work / "tree", fd.ROCKY), 64)
    disk, layout = _gpt_disk(work, [("efi", ld.ESP_TYPE, ESP_MIB, _esp(work)), ("lvm", ld.LVM_TYPE, REST_MIB, None)])
    pv = layout[1]
    first_pe, extent, segs = ld.rocky_vg(disk, pv, root, 64)
    with disk.open("rb") as f:
        f.seek(pv.offset + 4096)
        header = f.read(512)
        offset, size = struct.unpack_from("<QQ", header, 40)
    (seg,) = [s for s in segs if s.lv == "root"]
    lv_at = pv.offset + first_pe + seg.ranges[0][1] * extent
    return disk, [*table_regions(disk), Region("lvm.label", pv.offset + 512, 512, LVM_LABEL, weight=3),
                  Region("lvm.mda", pv.offset + 4096, 512, LVM_MDA, weight=3),
                  Region("lvm.text", pv.offset + 4096 + offset, size, weight=2),
                  *ext_regions(root, lv_at, ("/", "/etc", "/etc/os-release"))]


# NTFS and the registry hives ---------------------------------------------------------------------

NTFS_BOOT = _fields(_u(2, ("bytes_per_sector", 11)), _u(1, ("sectors_per_cluster", 13), ("mft_record_clusters", 64),
                                                         ("index_clusters", 68)),
                    _u(8, ("total_sectors", 40), ("mft_lcn", 48), ("mftmirr_lcn", 56)))
MFT_RECORD = _fields(_u(2, ("usa_offset", 4), ("usa_count", 6), ("link_count", 18), ("attrs_offset", 20),
                        ("flags", 22)),
                     _u(4, ("bytes_in_use", 24), ("bytes_allocated", 28)), _u(8, ("base_record", 32)))
INDX = _fields(_u(2, ("usa_offset", 4), ("usa_count", 6)),
               _u(4, ("entries_offset", 0x18), ("index_length", 0x1C), ("allocated", 0x20)), _u(8, ("vcn", 0x10)))
REGF = _fields(_u(4, ("seq1", 4), ("seq2", 8), ("major", 20), ("minor", 24), ("type", 28), ("root_cell", 36),
                     ("bins_size", 40), ("checksum", 508)))
HBIN = _u(4, ("offset", 4), ("size", 8))
CELLS = {  # offsets from the cell's start (its 4-byte size, then the signature); negative: from its end
    b"nk": _fields(_u(4, ("size", 0), ("parent", 20), ("subkeys", 24), ("subkey_list", 32), ("values", 40),
                      ("value_list", 44), ("security", 48), ("class", 52)),
                   _u(2, ("flags", 6), ("name_length", 76), ("class_length", 78))),
    b"vk": _fields(_u(4, ("size", 0), ("data_length", 8), ("data_offset", 12), ("type", 16)),
                   _u(2, ("name_length", 6), ("flags", 20))),
    b"lh": _fields(_u(4, ("size", 0), ("first", 8), ("last", -8)), _u(2, ("count", 6))),
    b"lf": _fields(_u(4, ("size", 0), ("first", 8)), _u(2, ("count", 6))),
    b"ri": _fields(_u(4, ("size", 0), ("first", 8)), _u(2, ("count", 6))),
    b"li": _fields(_u(4, ("size", 0), ("first", 8)), _u(2, ("count", 6))),
}


def _attributes(record: bytes) -> tuple[Field, ...]:
    """Fields of each attribute in an MFT record: its header and where its value or runs are."""
    fields: list[Field] = []
    pos = struct.unpack_from("<H", record, 20)[0]
    for i in range(8):
        if pos + 24 > len(record) or record[pos:pos + 4] == b"\xff\xff\xff\xff":
            break
        kind, length, nonresident = struct.unpack_from("<IIB", record, pos)
        name = f"a{i}(type {kind:#x})"
        fields += [Field(f"{name}.length", pos + 4, 4), Field(f"{name}.non_resident", pos + 8, 1),
                   Field(f"{name}.name_length", pos + 9, 1), Field(f"{name}.name_offset", pos + 10, 2)]
        if nonresident:
            fields += [Field(f"{name}.{n}", pos + o, w) for n, o, w in (
                ("lowest_vcn", 16, 8), ("highest_vcn", 24, 8), ("runs_offset", 32, 2), ("allocated", 40, 8),
                ("data_size", 48, 8), ("initialized", 56, 8))]
            runs = pos + struct.unpack_from("<H", record, pos + 32)[0]
            fields += [Field(f"{name}.run0_header", runs, 1), Field(f"{name}.run0", runs + 1, 4)]
        else:
            fields += [Field(f"{name}.value_length", pos + 16, 4), Field(f"{name}.value_offset", pos + 20, 2)]
        if length < 24:
            break
        pos += length
    return tuple(fields)


def ntfs_regions(image: Path, start: int, records: int = 80, hive_cells: int = 60) -> list[Region]:
    """Boot sector, MFT records, directory index blocks, and each hive's base block, bins and cells."""
    with image.open("rb") as f:
        boot = f.read(512)
        sector, per_cluster = struct.unpack_from("<HB", boot, 11)
        mft = struct.unpack_from("<Q", boot, 48)[0] * sector * per_cluster
        regions = [Region("ntfs.boot", start, 512, NTFS_BOOT, weight=4)]
        f.seek(mft)
        for number in range(records):
            record = f.read(1024)
            if record[:4] == b"FILE" and struct.unpack_from("<H", record, 22)[0] & 1:
                regions.append(Region(f"ntfs.mft[{number}]", start + mft + 1024 * number, 1024,
                                      MFT_RECORD + _attributes(record), weight=3 if number in (0, 5) else 1))
        found = 0
        for pos, length in _data_extents(image):
            f.seek(pos)
            data = f.read(length)
            for at in range(0, len(data), 4096):
                magic = data[at:at + 4]
                if magic == b"INDX":
                    regions.append(Region(f"ntfs.indx@{pos + at:#x}", start + pos + at, 4096, INDX))
                elif magic == b"regf":
                    regions += _hive_regions(data, at, start + pos, hive_cells, found)
                    found += 1
    return regions


def _hive_regions(data: bytes, at: int, base: int, limit: int, number: int) -> list[Region]:
    name = f"hive{number}"
    regions = [Region(f"{name}.base", base + at, 512, REGF, weight=2)]
    hbin = at + 4096
    if data[hbin:hbin + 4] != b"hbin":
        return regions
    regions.append(Region(f"{name}.hbin0", base + hbin, 32, HBIN))
    pos, end = hbin + 32, hbin + struct.unpack_from("<I", data, hbin + 8)[0]
    while pos + 8 <= min(end, len(data)) and len(regions) < limit:
        size = struct.unpack_from("<i", data, pos)[0]
        kind = data[pos + 4:pos + 6]
        if kind in CELLS:
            fields = tuple(Field(fl.name, fl.offset if fl.offset >= 0 else abs(size) + fl.offset, fl.width)
                           for fl in CELLS[kind])
            regions.append(Region(f"{name}.{kind.decode()}@{pos - hbin:#x}", base + pos, abs(size), fields))
        if size == 0:
            break
        pos += abs(size)
    return regions


def hive_fixup(f: BinaryIO, b: Base) -> None:
    """Each hive's base block checksum (XOR of its first 127 dwords), as Windows writes it."""
    for region in b.regions:
        if region.name.endswith(".base") and region.name.startswith("hive"):
            f.seek(region.offset)
            block = bytearray(f.read(512))
            check = 0
            for (word,) in struct.iter_unpack("<I", bytes(block[:508])):
                check ^= word
            struct.pack_into("<I", block, 508, check)
            f.seek(region.offset)
            f.write(block)


def build_ntfs(work: Path) -> tuple[Path, list[Region]]:
    """Windows-like: ESP with bootmgfw, MSR, C: on NTFS holding SOFTWARE and SYSTEM hives."""
    w = wf.Windows("Windows Server 2022 Datacenter", "ServerDatacenter", "Server", "20348",
                   display_version="21H2", drivers={"viostor": 0, "vioscsi": 0, "netkvm": 3})
    files = wf.windows_files(w) | {wf.CLOUDBASE_CONF: fd.cloudbase_conf(["OpenStack"])}
    c = wf.ntfs_volume(work / "c.img", files, (REST_MIB - 16) * MIB)
    loaders = {"EFI/Microsoft/Boot/bootmgfw.efi": fd.sample_disk.PE_X86_64,
               "EFI/BOOT/BOOTX64.EFI": fd.sample_disk.PE_X86_64}
    disk, layout = _gpt_disk(work, [("esp", ld.ESP_TYPE, ESP_MIB, _esp(work, loaders)), ("msr", fd.MSR, 16, None),
                                    ("c", fd.BASIC_DATA, REST_MIB - 16, c)])
    return disk, [*table_regions(disk), *fat_regions(disk, layout[0].offset), *ntfs_regions(c, layout[2].offset)]


def _needs_fuse() -> str | None:
    if not (shutil.which("mkntfs") and shutil.which("ntfs-3g") and os.path.exists("/dev/fuse")):
        return "needs mkntfs, ntfs-3g and /dev/fuse"
    return None


# Containers: the ext disk as qcow2, vmdk and vhd -------------------------------------------------

QCOW2_HEADER = _fields(
    _u(4, ("version", 4), ("backing_file_size", 16), ("cluster_bits", 20), ("crypt_method", 32), ("l1_size", 36),
       ("refcount_table_clusters", 56), ("nb_snapshots", 60), ("refcount_order", 96), ("header_length", 100)),
    _u(8, ("backing_file_offset", 8), ("size", 24), ("l1_table_offset", 40), ("refcount_table_offset", 48),
       ("snapshots_offset", 64), ("incompatible_features", 72), ("autoclear_features", 88)), big=True)
VMDK_HEADER = _fields(_u(4, ("version", 4), ("flags", 8), ("gtes_per_gt", 44)),
                      _u(8, ("capacity", 12), ("grain_size", 20), ("descriptor_offset", 28), ("descriptor_size", 36),
                         ("rgd_offset", 48), ("gd_offset", 56), ("overhead", 64)),
                      _u(2, ("compress_algorithm", 77)))
VHD_FOOTER = _fields(_u(8, ("data_offset", 16), ("original_size", 40), ("current_size", 48)),
                     _u(4, ("features", 8), ("version", 12), ("disk_type", 60), ("checksum", 64)),
                     _u(2, ("cylinders", 56)), _u(1, ("heads", 58), ("sectors", 59)), big=True)
VHD_DYNAMIC = _fields(_u(8, ("data_offset", 8), ("table_offset", 16)),
                      _u(4, ("version", 24), ("max_table_entries", 28), ("block_size", 32), ("checksum", 36)), big=True)


def _table(name: str, offset: int, count: int, width: int, big: bool) -> Region:
    return Region(name, offset, count * width, tuple(Field(f"e{i}", i * width, width, big) for i in range(count)))


def _convert(work: Path, fmt: str, *options: str) -> Path:
    raw = fuzz.base(TARGETS[0]).disk  # the ext target's disk, built once
    out = work / f"disk.{fmt}"
    _run("qemu-img", "convert", "-f", "raw", "-O", fmt, *options, raw, out)
    return out


def build_qcow2(work: Path) -> tuple[Path, list[Region]]:
    disk = _convert(work, "qcow2")
    with disk.open("rb") as f:
        head = f.read(104)
        l1_size, l1_at = struct.unpack_from(">IQ", head, 36)
        f.seek(l1_at)
        l1 = f.read(8 * min(l1_size, 64))
    regions = [Region("qcow2.header", 0, 104, QCOW2_HEADER, weight=4),
               _table("qcow2.l1", l1_at, min(l1_size, 8), 8, True)]
    for i in range(0, len(l1), 8):
        l2 = struct.unpack_from(">Q", l1, i)[0] & 0x00FFFFFFFFFFFE00
        if l2:
            regions.append(_table(f"qcow2.l2[{i // 8}]", l2, 32, 8, True))
    return disk, regions


def build_vmdk(work: Path) -> tuple[Path, list[Region]]:
    disk = _convert(work, "vmdk", "-o", "subformat=monolithicSparse")
    with disk.open("rb") as f:
        head = f.read(512)
        desc_at, desc_size = struct.unpack_from("<QQ", head, 28)
        gd_at = struct.unpack_from("<Q", head, 56)[0]
        f.seek(gd_at * 512)
        gd = f.read(4 * 16)
    regions = [Region("vmdk.header", 0, 512, VMDK_HEADER, weight=4),
               Region("vmdk.descriptor", desc_at * 512, desc_size * 512, weight=2),
               _table("vmdk.gd", gd_at * 512, 16, 4, False)]
    gt = struct.unpack_from("<I", gd, 0)[0]
    if gt:
        regions.append(_table("vmdk.gt0", gt * 512, 32, 4, False))
    return disk, regions


def vmdk_descriptor(rng: random.Random, f: BinaryIO, b: Base) -> str:
    """A number of the descriptor text (the extent's sector count, the geometry) changed."""
    region = _region(b, "vmdk.descriptor")
    f.seek(region.offset)
    text = f.read(region.length)
    numbers = list(re.finditer(rb"\d+", text.rstrip(b"\0")))
    m = rng.choice(numbers)
    value = rng.choice([0, 1, (1 << 63) - 1, 1 << 64, 1 << 40, int(m[0]) * 2 + 1])
    new = (text[:m.start()] + str(value).encode() + text[m.end():])[:region.length]
    f.seek(region.offset)
    f.write(new)
    return f"vmdk.descriptor: {m[0].decode()} -> {value}"


def build_vhd(work: Path) -> tuple[Path, list[Region]]:
    disk = _convert(work, "vpc", "-o", "subformat=dynamic,force_size=on")
    size = disk.stat().st_size
    with disk.open("rb") as f:
        footer = f.read(512)
        dyn_at = struct.unpack_from(">Q", footer, 16)[0]
        f.seek(dyn_at)
        dyn = f.read(1024)
        bat_at = struct.unpack_from(">Q", dyn, 16)[0]
    return disk, [Region("vhd.footer", size - 512, 512, VHD_FOOTER, weight=3),
                  Region("vhd.footer_copy", 0, 512, VHD_FOOTER, weight=2),
                  Region("vhd.dynamic", dyn_at, 1024, VHD_DYNAMIC, weight=3),
                  _table("vhd.bat", bat_at, 32, 4, True)]


def vhd_fixup(f: BinaryIO, b: Base) -> None:
    """The footers' and the dynamic header's checksums (one's complement of the byte sum)."""
    for name, at in (("vhd.footer", 64), ("vhd.footer_copy", 64), ("vhd.dynamic", 36)):
        region = _region(b, name)
        f.seek(region.offset)
        block = bytearray(f.read(region.length))
        block[at:at + 4] = bytes(4)
        struct.pack_into(">I", block, at, ~sum(block) & 0xFFFFFFFF)
        f.seek(region.offset)
        f.write(block)


TARGETS: list[Target] = [
    Target(name="ext", reader="ext4 + GPT + FAT32 ESP", build=build_ext, sources=BUILDERS, fixup=ext_fixup),
    Target(name="mbr", reader="MBR + FAT16 ESP + ext4", build=build_mbr, sources=BUILDERS, fixup=ext_fixup),
    Target(name="xfs", reader="xfs", build=build_xfs, sources=BUILDERS,
           requires=lambda: None if shutil.which("mkfs.xfs") and shutil.which("xfs_db") else "needs xfsprogs"),
    Target(name="btrfs", reader="btrfs", build=build_btrfs, sources=BUILDERS, requires=_needs_root),
    Target(name="lvm", reader="LVM2 (+ ext4 LV)", build=build_lvm, sources=BUILDERS, fixup=lvm_and_ext_fixup,
           mutators=(lvm_text,), requires=lambda: None if ld.HAVE_TOOLS else "needs root, lvm2 and losetup"),
    Target(name="ntfs", reader="NTFS + registry hives", build=build_ntfs, sources=BUILDERS, fixup=hive_fixup,
           requires=_needs_fuse),
    Target(name="qcow2", reader="qcow2 header", build=build_qcow2, sources=BUILDERS),
    Target(name="vmdk", reader="vmdk header", build=build_vmdk, sources=BUILDERS, mutators=(vmdk_descriptor,)),
    Target(name="vhd", reader="vhd header", build=build_vhd, sources=BUILDERS, fixup=vhd_fixup),
]


def available() -> list[Target]:
    return [t for t in TARGETS if t.requires() is None]


def unavailable() -> list[str]:
    return [f"{t.name} ({why})" for t in TARGETS if (why := t.requires()) is not None]
