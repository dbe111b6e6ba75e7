#!/usr/bin/env python3
"""Real Debian 12 guests for the strict-firmware boot tests, built without emulation.

arm64:  `mmdebstrap --arch=arm64 --variant=extract` (no maintainer scripts, so no binfmt/qemu-user);
        an initramfs assembled here from the guest's own busybox and the arm64 modules that
        find the root disk (virtio_pci, virtio_blk, ext4 and what their .modinfo says they
        depend on); `grub-mkimage -O arm64-efi` from the guest's GRUB modules, run on the x86
        host, as EFI/BOOT/BOOTAA64.EFI. busybox init prints a login-like line and the marker.
signed: the cached Debian 12 amd64 guest (debian_guest, uefi layout: its kernel is Debian's signed
        one) with Debian's signed boot chain on its ESP: shimx64.efi.signed (Microsoft UEFI CA
        2011 and 2023) as EFI/BOOT/BOOTX64.EFI, grubx64.efi.signed beside it, and a grub.cfg.
        The same guest without them (its grub-mkstandalone loader, unsigned) is the refused one.

Each is built once per content of this file (and debian_guest's) under the imgpipe cache dir, locked.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgpipe_dev import debian_guest as dg

MIB = 1 << 20
ARM64_PACKAGES = ("linux-image-arm64", "busybox-static", "grub-efi-arm64-bin", "base-files")
ARM64_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")  # ext4 soft-depends on crc32c
ARM64_DISK_MIB = 384
ARM64_GRUB_MODULES = ("part_gpt", "fat", "ext2", "search", "search_fs_uuid", "linux", "gzio", "echo", "normal")
SIGNED_PACKAGES = ("shim-signed", "grub-efi-amd64-signed")
MARKER = "imgpipe-strict-guest login:"  # boot-check's default expect is "login:"
ESP_SERIAL = "2EB0074A"


def cache_dir() -> Path:
    base = os.environ.get("IMGPIPE_CACHE_DIR") or Path.home() / ".cache" / "imgpipe"
    digest = hashlib.sha256(Path(__file__).read_bytes() + Path(dg.__file__).read_bytes()).hexdigest()[:16]
    return Path(base) / "strict-guests" / digest


def cached(name: str) -> Path:
    """arm64.qcow2 or signed.qcow2, built on first use."""
    out = cache_dir()
    target = out / f"{name}.qcow2"
    if target.exists():
        return target
    out.mkdir(parents=True, exist_ok=True)
    with dg._locked(out / f".{name}.lock"):
        if not target.exists():
            started = time.monotonic()
            {"arm64": build_arm64, "signed": build_signed}[name](target)
            print(f"built {target} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return target


def build_arm64(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="arm64-guest-", dir=target.parent) as tmp:
        work = Path(tmp)
        root = work / "root"
        dg._run("mmdebstrap", "--arch=arm64", "--variant=extract", "--include=" + ",".join(ARM64_PACKAGES),
                *[f"--dpkgopt=path-exclude={p}" for p in dg.EXCLUDES], "bookworm", root)
        kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
        version = kernel.name.removeprefix("vmlinuz-")
        modules = _closure(root / "lib/modules" / version, ARM64_MODULES)
        (root / "boot" / f"initrd.img-{version}").write_bytes(_initramfs(root, version, modules))
        _trim_arm64(root, version, modules)
        efi = work / "BOOTAA64.EFI"
        (work / "early.cfg").write_text(
            f"search --no-floppy --fs-uuid --set=root {dg.ROOT_UUID}\n"
            f"linux /boot/{kernel.name} root=UUID={dg.ROOT_UUID} ro console=ttyAMA0\n"
            f"initrd /boot/initrd.img-{version}\nboot\n")
        dg._run("grub-mkimage", "-d", root / "usr/lib/grub/arm64-efi", "-O", "arm64-efi", "-o", efi,
                "-c", work / "early.cfg", "-p", "/EFI/BOOT", *ARM64_GRUB_MODULES)
        shutil.rmtree(root / "usr/lib/grub")
        _root_setup(root)
        raw = work / "disk.raw"
        _disk(raw, root, {"EFI/BOOT/BOOTAA64.EFI": efi}, work)
        dg._run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").rename(target)


def _closure(base: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The modules `wanted` needs, dependencies first, from each .ko's own `depends=` (the
    extract variant ran no depmod, and the host's kmod is not needed)."""
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in base.rglob("*.ko")}
    ordered: list[Path] = []

    def visit(name: str) -> None:
        path = index[name.replace("-", "_")]
        if path in ordered:
            return
        info = path.read_bytes()
        at = info.find(b"\0depends=")
        depends = info[at + 9:info.index(b"\0", at + 9)].decode() if at >= 0 else ""
        for dep in filter(None, depends.split(",")):
            visit(dep)
        ordered.append(path)

    for name in wanted:
        visit(name)
    return ordered


def _initramfs(root: Path, version: str, modules: list[Path]) -> bytes:
    init = ("#!/bin/busybox sh\n/bin/busybox --install -s /bin\n"
            "mount -t devtmpfs dev /dev; mount -t proc proc /proc; mount -t sysfs sys /sys\n"
            + "".join(f"insmod /lib/modules/{m.name}\n" for m in modules) +
            f"for i in $(seq 100); do dev=$(findfs UUID={dg.ROOT_UUID}) && break; sleep 0.1; done\n"
            "mount -t ext4 -o ro $dev /newroot\n"
            "mount --move /dev /newroot/dev; mount --move /proc /newroot/proc; mount --move /sys /newroot/sys\n"
            "exec switch_root /newroot /sbin/init\n")
    entries: list[tuple[str, int, bytes, int]] = [
        (d, 0o40755, b"", 0) for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")]
    entries += [("dev/console", 0o20600, b"", (5 << 8) | 1), ("init", 0o100755, init.encode(), 0),
                ("bin/busybox", 0o100755, (root / "bin/busybox").read_bytes(), 0)]
    entries += [(f"lib/modules/{m.name}", 0o100644, m.read_bytes(), 0) for m in modules]
    return gzip.compress(_cpio(entries), compresslevel=6)


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """newc cpio: name, mode, data, device number (major << 8 | minor) for device nodes."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(encoded), 0)
        out += b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data + b"\0" * (-len(data) % 4)
    return bytes(out)


def _trim_arm64(root: Path, version: str, keep: list[Path]) -> None:
    """Only the modules the initramfs loads stay in the guest (inspection reads its drivers there)."""
    base = root / "lib/modules" / version
    for module in base.rglob("*.ko"):
        if module not in keep:
            module.unlink()


def _root_setup(root: Path) -> None:
    (root / "sbin").mkdir(exist_ok=True)
    for link, target in (("sbin/init", "/bin/busybox"), ("bin/sh", "busybox")):
        (root / link).unlink(missing_ok=True)
        (root / link).symlink_to(target)
    (root / "etc/inittab").write_text(f"::sysinit:/bin/busybox echo {MARKER}\n::respawn:/bin/busybox sleep 3600\n")
    (root / "etc/hostname").write_text("arm64-guest\n")


def _disk(raw: Path, root: Path, esp_files: dict[str, Path], work: Path) -> None:
    with open(raw, "wb") as fh:
        fh.truncate(ARM64_DISK_MIB * MIB)
    dg._run("sgdisk", "-n", f"1:0:+{dg.ESP_MIB}MiB", "-t", "1:EF00", "-c", "1:esp", "-n", "2:0:0", "-t", "2:8300",
            "-c", "2:root", raw)
    starts = dg._starts(raw)
    esp = work / "esp.img"
    dg._run("mkfs.vfat", "-i", ESP_SERIAL, "-n", "ESP", "-C", esp, str(dg.ESP_MIB * 1024))
    dg._run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
    for path, source in esp_files.items():
        dg._run("mcopy", "-i", esp, source, f"::/{path}")
    image = work / "root.img"
    size = ARM64_DISK_MIB * MIB - starts[2] * dg.SECTOR - MIB
    dg._run("mkfs.ext4", "-q", "-F", "-U", dg.ROOT_UUID, "-L", "root", "-d", root, image, f"{size // 1024}k")
    dg._place(raw, esp, starts[1])
    dg._place(raw, image, starts[2])


def build_signed(target: Path) -> None:
    """Debian's signed shim and GRUB (from the host's apt sources) on the ESP of the uefi guest."""
    source = dg.cached("uefi")
    with tempfile.TemporaryDirectory(prefix="signed-guest-", dir=target.parent) as tmp:
        work = Path(tmp)
        subprocess.run(["apt-get", "download", *SIGNED_PACKAGES], cwd=work, check=True, capture_output=True)
        for deb in work.glob("*.deb"):
            dg._run("dpkg-deb", "-x", deb, work / "x")
        raw = work / "disk.raw"
        dg._run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", source, raw)
        starts = dg._starts(raw)
        esp = f"{raw}@@{starts[1] * dg.SECTOR}"
        kernel = _guest_kernel(raw, starts[max(starts)])
        cfg = work / "grub.cfg"
        cfg.write_text(dg._grub_cfg(f"/boot/vmlinuz-{kernel}", f"/boot/initrd.img-{kernel}"))
        dg._run("mmd", "-D", "s", "-i", esp, "::/EFI/debian")
        for source_file, dest in ((work / "x/usr/lib/shim/shimx64.efi.signed", "EFI/BOOT/BOOTX64.EFI"),
                                  (work / "x/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
                                   "EFI/BOOT/grubx64.efi"),
                                  (cfg, "EFI/BOOT/grub.cfg"), (cfg, "EFI/debian/grub.cfg")):
            dg._run("mcopy", "-o", "-i", esp, source_file, f"::/{dest}")
        dg._run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").rename(target)


def _guest_kernel(raw: Path, root_start: int) -> str:
    listing = subprocess.run(["debugfs", "-R", "ls -p /boot", f"{raw}?offset={root_start * dg.SECTOR}"],
                             check=True, capture_output=True, text=True).stdout
    names = [f.split("/")[5] for f in listing.splitlines() if f.count("/") >= 6]
    return sorted(n.removeprefix("vmlinuz-") for n in names if n.startswith("vmlinuz-"))[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=("arm64", "signed"))
    print(cached(parser.parse_args().name))


if __name__ == "__main__":
    main()
