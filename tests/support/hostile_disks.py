"""Named hostile disks: each one a way to make `imgpipe inspect` exhaust the machine or crash,
built small (sparse, compressed qcow2) and kept as a regression fixture (issue 20).

One builder per case; HOSTILE maps its name to the builder. Each is what an attacker would
hand over: a real filesystem made by its own mkfs, then a few of its fields rewritten (and
its checksum recomputed, so the reader gets past it, as the kernel would).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MIB = 1 << 20
GIB = 1 << 30
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32C without the final inversion, as ext4's ext4_chksum chains it."""
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def ext4_superblock_csum(sb: bytes) -> int:
    """ext4's s_checksum: crc32c seeded with ~0 over the first 1020 bytes."""
    return crc32c(sb[:0x3FC])


def ext4_desc_csum(sb: bytes, group: int, desc: bytes) -> int:
    """bg_checksum with metadata_csum: crc32c of the group number and the descriptor (its own
    checksum field as zeros), seeded with the filesystem's checksum seed; the low 16 bits."""
    seed = struct.unpack_from("<I", sb, 0x270)[0] if struct.unpack_from("<I", sb, 96)[0] & 0x2000 \
        else crc32c(sb[0x68:0x78])
    crc = crc32c(struct.pack("<I", group), seed)
    crc = crc32c(desc[:0x1E] + b"\0\0" + desc[0x20:], crc)
    return crc & 0xFFFF


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
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest)
    raw.unlink()
    return dest


def _small_gpt(dest: Path, esp: Path | None, root: Path) -> Path:
    """A qcow2 of a 64 GiB GPT disk: an optional 34 MiB ESP, then `root` in a partition to the end."""
    raw = dest.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(64 * GIB)
    table = "label: gpt\n" + (f"start=2048, size={34 * 2048}, type={ESP_TYPE}, name=efi\n" if esp else "") + \
        f"type={LINUX_TYPE}, name=root\n"
    _run("sfdisk", "-q", raw, stdin=table.encode())
    root_at = (2048 + (34 * 2048 if esp else 0)) * 512
    for image, at in ((esp, 2048 * 512), (root, root_at)):
        if image is not None:
            _run("dd", f"if={image}", f"of={raw}", "bs=1M", f"seek={at}", "oflag=seek_bytes", "conv=notrunc,sparse")
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest)
    raw.unlink()
    return dest


def _ext4_tree(work: Path) -> Path:
    tree = work / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (tree / "sbin").mkdir()
    (tree / "sbin" / "init").write_bytes(b"\x7fELF\x02\x01\x01".ljust(18, b"\0") + b"\x3e\x00")
    return tree


def ext_inline_flag_on_os_release(dest: Path) -> Path:
    """Found by the fuzzer (lvm target, seed 1, case 130): an ext4 without the inline_data feature
    whose /etc/os-release inode carries EXT4_INLINE_DATA_FL. ext_blocks raises Unsupported when the
    root is probed for os-release, where nothing catches it: a traceback, exit 1."""
    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    root = work / "root.img"
    _run("mkfs.ext4", "-q", "-F", "-d", _ext4_tree(work), root, "32M")
    _run("debugfs", "-w", "-R", "set_inode_field /etc/os-release flags 0x10000000", root)
    return _small_gpt(dest, None, root)


def _esp_disk(dest: Path, damage: Callable[[BinaryIO, bytes], None]) -> Path:
    """A 64 GiB disk: a FAT32 ESP holding EFI/BOOT/BOOTX64.EFI, damaged by `damage(file, boot
    sector)`, and a small ext4 root."""
    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    esp = work / "esp.img"
    with esp.open("wb") as f:
        f.truncate(34 * MIB)
    _run("mkfs.vfat", "-F", "32", esp)
    loader = work / "BOOTX64.EFI"
    loader.write_bytes(b"MZ".ljust(60, b"\0") + (64).to_bytes(4, "little") + b"PE\0\0" + (0x8664).to_bytes(2, "little"))
    _run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
    _run("mcopy", "-i", esp, loader, "::/EFI/BOOT/BOOTX64.EFI")
    with esp.open("r+b") as f:
        damage(f, f.read(512))
    root = work / "root.img"
    _run("mkfs.ext4", "-q", "-F", "-d", _ext4_tree(work), root, "32M")
    return _small_gpt(dest, esp, root)


def esp_directory_loop(dest: Path) -> Path:
    """Found by the fuzzer (ext target, seed 1, case 198; seed 2, case 54 through a '..' entry): the
    ESP's EFI directory entry points at cluster 2, the FAT32 root directory itself. mdir follows the
    loop until it crashes (SIGSEGV); guest.esp lets runner.CommandFailed through: a traceback, exit 1."""

    def loop(f: BinaryIO, boot: bytes) -> None:
        per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", boot, 11)
        fat_size, root_cluster = struct.unpack_from("<I", boot, 36)[0], struct.unpack_from("<I", boot, 44)[0]
        root_dir = (reserved + fats * fat_size + (root_cluster - 2) * per_cluster) * per_sector
        f.seek(root_dir)
        entries = f.read(per_sector * per_cluster)
        index = next(i for i in range(0, len(entries), 32) if entries[i:i + 11] == b"EFI        ")
        f.seek(root_dir + index + 20)
        f.write(struct.pack("<H", root_cluster >> 16))
        f.seek(root_dir + index + 26)
        f.write(struct.pack("<H", root_cluster & 0xFFFF))

    return _esp_disk(dest, loop)


def esp_zero_sectors_per_cluster(dest: Path) -> Path:
    """Found by the fuzzer (mbr target, seed 3, case 73): an ESP whose boot sector says 0 sectors
    per cluster. mdir divides by it (SIGFPE); guest.esp lets runner.CommandFailed through."""

    def zero(f: BinaryIO, boot: bytes) -> None:
        f.seek(13)
        f.write(b"\0")

    return _esp_disk(dest, zero)


def esp_huge_fat(dest: Path) -> Path:
    """Found by the fuzzer (ext target, seed 4, case 117): an ESP whose boot sector says each FAT
    is 2^31 sectors. mdir (under a 1 GiB address-space cap only) reaches ~770 MiB of RSS reading
    it: the process tree is over 300 MiB within 2 s, though imgpipe ends with exit 0."""

    def huge(f: BinaryIO, boot: bytes) -> None:
        f.seek(36)
        f.write(struct.pack("<I", 0x80000000))

    return _esp_disk(dest, huge)


def esp_error_without_file_name(dest: Path) -> Path:
    """Found by the fuzzer (ext target, seed 4, cases 333 and 351): damage inside one file of the
    ESP was refused (exit 20) in one line that named the partition but not the file. Here the
    loader's cluster chain loops back to its first cluster, and its entry claims 64 KiB, so
    reading its PE header follows the loop."""

    def chain_loop(f: BinaryIO, boot: bytes) -> None:
        per_sector, _, reserved = struct.unpack_from("<HBH", boot, 11)
        f.seek(0)
        volume = f.read()
        entry = volume.find(b"BOOTX64 EFI")
        assert entry > 0 and entry % 32 == 0
        first = int.from_bytes(volume[entry + 20:entry + 22], "little") << 16 \
            | int.from_bytes(volume[entry + 26:entry + 28], "little")
        f.seek(entry + 28)
        f.write(struct.pack("<I", 64 << 10))
        f.seek(reserved * per_sector + 4 * first)
        f.write(struct.pack("<I", first))  # FAT32: the first cluster's successor is itself

    return _esp_disk(dest, chain_loop)


def esp_directories_sharing_a_chain(dest: Path) -> Path:
    """An ESP whose EFI directory holds 4096 subdirectories (the reader's cap for one directory),
    each with a cluster of its own (so no directory is met twice) whose chain then joins one
    shared tail: every subdirectory is as large as the reader allows (128 KiB), and walking them
    reads 512 MiB from a 34 MiB partition. Only the inspection's read budget stops it."""

    def shared_tail(f: BinaryIO, boot: bytes) -> None:
        per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", boot, 11)
        fat_size, root_cluster = struct.unpack_from("<I", boot, 36)[0], struct.unpack_from("<I", boot, 44)[0]
        cluster_bytes = per_sector * per_cluster
        data_at = (reserved + fats * fat_size) * per_sector
        entries, per_dir = 4096, (4096 * 32) // cluster_bytes  # clusters of the largest directory read
        efi = list(range(1000, 1000 + per_dir))
        subdirs = list(range(efi[-1] + 1, efi[-1] + 1 + entries))
        tail = list(range(subdirs[-1] + 1, subdirs[-1] + per_dir))

        def chain(clusters: list[int], end: int = 0x0FFFFFFF) -> None:
            for cluster, after in zip(clusters, [*clusters[1:], end], strict=True):
                for copy in range(fats):
                    f.seek((reserved + copy * fat_size) * per_sector + 4 * cluster)
                    f.write(struct.pack("<I", after))

        def entry(name: bytes, cluster: int) -> bytes:
            return name.ljust(11) + bytes([0x10]) + bytes(8) + struct.pack("<H", cluster >> 16) + bytes(4) \
                + struct.pack("<HI", cluster & 0xFFFF, 0)

        chain(efi)
        chain(tail)
        for cluster in subdirs:
            chain([cluster], end=tail[0])
        f.seek(data_at + (efi[0] - 2) * cluster_bytes)
        f.write(b"".join(entry(f"D{n:07d}".encode(), c) for n, c in enumerate(subdirs)))
        for cluster in (*subdirs, *tail):  # deleted entries only: nothing more to follow
            f.seek(data_at + (cluster - 2) * cluster_bytes)
            f.write(b"\xe5" * cluster_bytes)
        root = data_at + (root_cluster - 2) * cluster_bytes
        f.seek(root)
        at = f.read(cluster_bytes).index(b"EFI        ")
        f.seek(root + at)
        f.write(entry(b"EFI", efi[0]))

    return _esp_disk(dest, shared_tail)


def hive_error_without_file_name(dest: Path) -> Path:
    """Found by the fuzzer (ntfs target, seed 4, cases 32 and 347): a SYSTEM hive whose current
    control set has no Services key. imgpipe refuses it (exit 20) in one line, but the line says
    "partition 1 /Windows/System32/config/SYSTEM: corrupt registry hive: ..." without the file."""
    import regf_writer as rw
    import windows_fixture as wf

    w = wf.Windows("Windows Server 2022 Datacenter", "ServerDatacenter", "Server", "20348", display_version="21H2")
    root = rw.Key("ROOT")
    root.add("Select", {"Current": 1, "Default": 1, "LastKnownGood": 1, "Failed": 0})
    root.add("ControlSet001\\Control", {"SystemStartOptions": "NOEXECUTE=OPTOUT"})
    files = wf.windows_files(w) | {"Windows/System32/config/SYSTEM": rw.build(root, "SYSTEM")[0]}
    return _ntfs_disk(dest, files)


def _ntfs_disk(dest: Path, files: dict[str, bytes]) -> Path:
    """A qcow2 of a 64 GiB GPT disk whose one partition is a 64 MiB NTFS holding `files`."""
    import windows_fixture as wf

    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    volume = wf.ntfs_volume(work / "c.img", files, 64 * MIB)
    raw = dest.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(64 * GIB)
    _run("sfdisk", "-q", raw, stdin=f"label: gpt\nstart=2048, size={64 * 2048}, type={BASIC_DATA}, name=c\n".encode())
    _run("dd", f"if={volume}", f"of={raw}", "bs=1M", f"seek={MIB}", "oflag=seek_bytes", "conv=notrunc,sparse")
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest)
    raw.unlink()
    return dest


def vmdk_descriptor_not_ascii(dest: Path) -> Path:
    """Found by the fuzzer (vmdk target, seed 1, case 196): a sparse vmdk whose descriptor holds a
    non-ASCII byte. imgpipe refuses it (exit 5, one line), but oslo.utils' format_inspector logs
    its own ERROR line first: two lines on stderr."""
    raw = dest.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(64 * MIB)
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, dest)
    raw.unlink()
    with dest.open("r+b") as f:
        at = struct.unpack_from("<Q", f.read(512), 28)[0] * 512
        f.seek(at + 3)
        f.write(b"\xe9")
    return dest


def hive_string_not_text(dest: Path) -> Path:
    """Found by the fuzzer (ntfs target, seed 3, case 77): a SOFTWARE hive whose CurrentVersion holds
    a REG_SZ of 3 bytes that are neither UTF-16 nor UTF-8. Inspection goes on (exit 0), but regipy
    logs its own WARNING line on stderr."""
    import windows_fixture as wf  # ntfs-3g and FUSE, only for this disk

    w = wf.Windows("Windows Server 2022 Datacenter", "ServerDatacenter", "Server", "20348", display_version="21H2")
    hive = bytearray(wf.software_hive(w))
    vk = hive.index(b"DigitalProductId") - 24  # size, "vk", name length, data length, data offset, type, ...
    data_at = struct.unpack_from("<I", hive, vk + 12)[0]
    struct.pack_into("<II", hive, vk + 8, 3, data_at)
    struct.pack_into("<I", hive, vk + 16, 1)  # REG_SZ
    hive[4096 + data_at + 4:4096 + data_at + 7] = b"\xd8\x00\xd8"
    return _ntfs_disk(dest, wf.windows_files(w) | {"Windows/System32/config/SOFTWARE": bytes(hive)})


def lvm_error_without_file_name(dest: Path) -> Path:
    """Found by the fuzzer (lvm target, seed 0, case 13): a PV label whose metadata area size
    disagrees with the area's own header (label checksum recomputed). imgpipe refuses it (exit 20)
    in one line, but the line says "partition 2: corrupt LVM2 metadata: ..." without the file."""
    import lvm_disks as ld  # root and loop devices, only for this disk

    raw = dest.with_suffix(".raw")
    _, pv = ld.gpt(raw, 64 << 10, [("efi", ESP_TYPE, 1), ("lvm", ld.LVM_TYPE, 64)])
    with ld.loops(raw, [pv]) as devices:
        ld.lvm(devices, "pvcreate", devices[0])
        ld.lvm(devices, "vgcreate", "rl", devices[0])
        ld.lvm(devices, "lvcreate", "-an", "-Zn", "-L", "16M", "-n", "root", "rl")
    with raw.open("r+b") as f:
        f.seek(pv.offset + 512)
        label = bytearray(f.read(512))
        struct.pack_into("<Q", label, 112, struct.unpack_from("<Q", label, 112)[0] << 8)  # the metadata area's size
        struct.pack_into("<I", label, 16, lvm_crc(bytes(label[20:])))
        f.seek(pv.offset + 512)
        f.write(label)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest)
    raw.unlink()
    return dest


def lvm_crc(data: bytes) -> int:
    """lvm's checksum: CRC-32 from its own initial value, without the usual inversions."""
    return zlib.crc32(data, 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _can_build_lvm() -> str | None:
    import lvm_disks as ld

    return None if ld.HAVE_TOOLS else "needs root, lvm2 and losetup"


def _can_mount_ntfs() -> str | None:
    if shutil.which("mkntfs") and shutil.which("ntfs-3g") and os.path.exists("/dev/fuse"):
        return None
    return "needs mkntfs, ntfs-3g and /dev/fuse"


@dataclass(frozen=True)
class Hostile:
    build: Callable[[Path], Path]
    codes: frozenset[int] = frozenset({20})  # the exit codes that are right for it
    open_bug: str = ""  # why imgpipe still fails it; the test is a strict xfail until fixed
    requires: Callable[[], str | None] = lambda: None  # why it cannot be built here, or None
    error: str = ""  # a pattern the error line must hold after the disk's path, when it fails


HOSTILE: dict[str, Hostile] = {
    "ext-group-descriptors": Hostile(ext_group_descriptors),
    # debugfs may read what fs/ext.py leaves (exit 0), or the inode be refused (exit 20)
    "ext-inline-flag-on-os-release": Hostile(ext_inline_flag_on_os_release, frozenset({0, 20})),
    "esp-directory-loop": Hostile(esp_directory_loop, frozenset({0, 20})),
    "esp-zero-sectors-per-cluster": Hostile(esp_zero_sectors_per_cluster, frozenset({0, 20})),
    "esp-huge-fat": Hostile(esp_huge_fat, frozenset({0, 20})),
    "esp-directories-sharing-a-chain": Hostile(esp_directories_sharing_a_chain, error=(
        r"partition 1: reading .* would take inspection past its 256\.0 MiB read budget \(IMGPIPE_INSPECT_READ\)$")),
    "esp-error-without-file-name": Hostile(esp_error_without_file_name, error=(
        r"partition 1 \(vfat\) /EFI/BOOT/BOOTX64\.EFI: cluster chain loops at cluster \d+$")),
    "lvm-error-without-file-name": Hostile(lvm_error_without_file_name, requires=_can_build_lvm),
    "hive-error-without-file-name": Hostile(hive_error_without_file_name, requires=_can_mount_ntfs),
    "vmdk-descriptor-not-ascii": Hostile(vmdk_descriptor_not_ascii, frozenset({5})),
    "hive-string-not-text": Hostile(hive_string_not_text, frozenset({0}), requires=_can_mount_ntfs),
}
