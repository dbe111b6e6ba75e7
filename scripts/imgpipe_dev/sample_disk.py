#!/usr/bin/env python3
"""Build realistic sample inputs: a guest disk (GPT, an EFI partition and an ext4 root full of
real files, plus what guest inspection looks for: BIOS and UEFI boot paths, os-release, init,
qemu-ga, a kernel module tree) and a minimal `docker save` archive.

Shipped as compressed qcow2, like distribution cloud images. Used by `make demo`, the tests and
the benchmark, so all three exercise the same shape of input. Needs sfdisk, mkfs.vfat,
mtools, mkfs.ext4 and qemu-img; no root, no loop devices (mkfs.ext4 -d fills the filesystem).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MIB = 1 << 20
EFI_MIB = 64
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
# Stand-ins, not real code: boot bytes carrying GRUB boot.img's strings, a PE header with the
# x86-64 machine field and an ELF header with e_machine x86-64. The disk is never booted.
GRUB_LIKE_MBR = (b"\xebc\x90" + bytes(0x17D) + b"GRUB \0Geom\0Hard Disk\0Read\0 Error\r\n").ljust(440, b"\0")
PE_X86_64 = b"MZ".ljust(60, b"\0") + (64).to_bytes(4, "little") + b"PE\0\0" + (0x8664).to_bytes(2, "little")
ELF_X86_64 = b"\x7fELF\x02\x01\x01".ljust(16, b"\0") + b"\x02\x00\x3e\x00".ljust(48, b"\0")
OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
KERNEL = "6.1.0-sample-amd64"
SAMPLE_MODULES = ("block/virtio_blk.ko", "scsi/virtio_scsi.ko", "scsi/vmw_pvscsi.ko", "scsi/hv_storvsc.ko",
                  "message/fusion/mptspi.ko", "message/fusion/mptsas.ko", "ata/ahci.ko", "ata/ata_piix.ko")
# Real files to copy into the root filesystem, in this order, until the budget is used.
DATA_TREES = ("/usr/lib", "/usr/share", "/usr/bin")


def _run(*argv: str) -> None:
    print("+", " ".join(argv), file=sys.stderr)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def _fill(root: Path, budget: int) -> int:
    """Copy real files (binaries, text, libraries) until `budget` bytes; deterministic order."""
    used = 0
    for tree in DATA_TREES:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in sorted(filenames):
                src = Path(dirpath, name)
                if not src.is_file() or src.is_symlink():
                    continue
                size = src.stat().st_size
                if used + size > budget:
                    return used
                dest = root / src.relative_to("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(src, dest)
                except OSError:
                    continue
                used += size
    return used


def build(dest: Path, size_mib: int, data_mib: int, fmt: str = "qcow2") -> Path:
    """Write the sample disk to dest (qcow2 compressed, or raw) and return dest."""
    with tempfile.TemporaryDirectory(prefix="imgpipe-sample-", dir=dest.parent) as tmp:
        work = Path(tmp)
        disk = work / "disk.raw"
        root_mib = size_mib - EFI_MIB - 3
        with disk.open("wb") as f:
            f.truncate(size_mib * MIB)
        table = f"label: gpt\nstart=2048, size={EFI_MIB * 2048}, type=U, name=efi\n" \
                f"size=2048, type={BIOS_BOOT_GUID}, name=bios\n" \
                f"size={root_mib * 2048}, type=L, name=root\n"
        subprocess.run(["sfdisk", "-q", str(disk)], input=table.encode(), check=True)
        with disk.open("r+b") as f:
            f.write(GRUB_LIKE_MBR)
        files = work / "files"
        (files / "etc").mkdir(parents=True)
        (files / "etc" / "hostname").write_text("imgpipe-sample\n")
        _fill(files, data_mib * MIB)
        _bootable_tree(files)
        efi, root = work / "efi.img", work / "root.img"
        with efi.open("wb") as f:
            f.truncate(EFI_MIB * MIB)
        _run("mkfs.vfat", "-n", "EFI", str(efi))
        loader = work / "BOOTX64.EFI"
        loader.write_bytes(PE_X86_64)
        _run("mmd", "-i", str(efi), "::/EFI", "::/EFI/BOOT")
        _run("mcopy", "-i", str(efi), str(loader), "::/EFI/BOOT/BOOTX64.EFI")
        _run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(files), str(root), f"{root_mib}M")
        _copy_into(efi, disk, MIB)
        _copy_into(root, disk, (2 + EFI_MIB) * MIB)
        if fmt == "raw":
            shutil.move(disk, dest)
        else:
            _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(disk), str(dest))
    return dest


def _bootable_tree(files: Path) -> None:
    """What guest inspection looks for: a merged-/usr layout with init, os-release, qemu-ga and a
    kernel module tree holding every storage driver the profiles need."""
    usr = files / "usr"
    for link, target in (("sbin", "usr/sbin"), ("lib", "usr/lib"), ("bin", "usr/bin")):
        if not (files / link).exists():
            (files / link).symlink_to(target)
    (usr / "lib" / "systemd").mkdir(parents=True, exist_ok=True)
    (usr / "lib" / "systemd" / "systemd").write_bytes(ELF_X86_64)
    (usr / "sbin").mkdir(parents=True, exist_ok=True)
    (usr / "sbin" / "init").unlink(missing_ok=True)
    (usr / "sbin" / "init").symlink_to("../lib/systemd/systemd")
    (usr / "bin").mkdir(parents=True, exist_ok=True)
    (usr / "bin" / "qemu-ga").write_bytes(ELF_X86_64)
    (usr / "lib" / "os-release").write_text(OS_RELEASE)
    (files / "etc" / "os-release").unlink(missing_ok=True)
    (files / "etc" / "os-release").symlink_to("../usr/lib/os-release")
    kernel = usr / "lib" / "modules" / KERNEL / "kernel" / "drivers"
    for rel in SAMPLE_MODULES:
        (kernel / rel).parent.mkdir(parents=True, exist_ok=True)
        (kernel / rel).write_bytes(b"")


def _copy_into(part: Path, disk: Path, offset: int) -> None:
    """Copy a filesystem image into the disk, keeping holes (both files are sparse)."""
    with part.open("rb") as src, disk.open("r+b") as out:
        pos = 0
        end = part.stat().st_size
        while pos < end:
            try:
                pos = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(src.fileno(), pos, os.SEEK_HOLE)
            src.seek(pos)
            out.seek(offset + pos)
            while pos < hole:
                chunk = src.read(min(MIB, hole - pos))
                out.write(chunk)
                pos += len(chunk)


def docker_archive(dest: Path, tags: list[str] | None) -> Path:
    """A minimal but complete `docker save` layout: manifest.json, config, one layer."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as inner:
        _add(inner, "etc/motd", b"imgpipe sample\n")
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
    with tarfile.open(dest, "w") as tar:
        _add(tar, "layer/layer.tar", layer.getvalue())
        _add(tar, "config.json", json.dumps(config).encode())
        _add(tar, "manifest.json", json.dumps([{"Config": "config.json", "RepoTags": tags,
                                                "Layers": ["layer/layer.tar"]}]).encode())
    return dest


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--data-mib", type=int, default=200)
    parser.add_argument("--format", choices=["qcow2", "raw"], default="qcow2")
    args = parser.parse_args()
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    build(args.dest, args.size_mib, args.data_mib, args.format)
    print(args.dest)


if __name__ == "__main__":
    main()
