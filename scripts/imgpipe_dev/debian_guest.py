#!/usr/bin/env python3
"""Build a small bootable Debian 12 guest for the real boot tests, in two layouts.

hybrid: GPT with a BIOS boot partition, an ESP and an ext4 root; GRUB for both firmwares (the
        layout of Debian's and Ubuntu's cloud images).
uefi:   GPT with an ESP and an ext4 root only; protective MBR without boot code (the layout of
        many vendor images, which SeaBIOS cannot boot).

No loop devices and no mounts: mmdebstrap into a directory, `mkfs.ext4 -d`, mkfs.vfat + mtools,
sgdisk on a sparse file. GRUB comes from the guest itself: grub-mkstandalone for
EFI/BOOT/BOOTX64.EFI, and for BIOS boot.img into the MBR plus core.img into the BIOS boot
partition with its blocklist patched, which is what grub-bios-setup would do (it refuses a plain
file on bookworm: "guessing the root device failed"). Both loaders carry their own grub.cfg that
finds the root by UUID and boots with console=ttyS0, so the serial console shows the login
prompt. Needs root (mmdebstrap's chroot mode), mmdebstrap, sgdisk, mtools, mkfs.vfat, mkfs.ext4,
qemu-img and (for with_files) debugfs.

`cached(layout)` builds once per content of this file under the imgpipe cache dir.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20
SECTOR = 512
DISK_MIB = 1536
ESP_MIB = 32
ROOT_UUID = "5c0f2a64-1d3e-4b7a-9a61-2f8e0c1d9b01"
ESP_SERIAL = "1EB0074A"
LAYOUTS = ("hybrid", "uefi")
# cloud-init for boot-check --config-drive: it proves that user data from a nova-style config drive runs.
PACKAGES = ("systemd-sysv", "linux-image-amd64", "grub-efi-amd64-bin", "grub-pc-bin", "cloud-init")
# systemd-networkd applies the network configuration cloud-init writes (on no datasource's word:
# DHCP on the first NIC), as a cloud image's own network service does. Without it, a datasource
# that waits for the network (Ec2) never reaches a metadata service. wait-online stays disabled:
# a boot with no NIC (a config-drive check) does not wait for one.
ENABLE_UNITS = ("systemd-networkd.service",)
DISABLE_UNITS = ("systemd-networkd-wait-online.service",)  # enabling networkd enables it too
# Documentation, manuals and translations are a third of a minimal system and never read here.
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
            "/usr/share/lintian/*")
# Kernel module trees a headless test guest never loads: a quarter of the image.
UNUSED_MODULES = ("drivers/gpu", "drivers/media", "drivers/net/wireless", "sound", "drivers/infiniband",
                  "drivers/iio", "drivers/staging", "drivers/comedi", "net/wireless", "net/mac80211")
# The initramfs carries only the storage drivers of the controllers a boot check imitates (and
# the ones guest inspection looks for): smaller, so it unpacks faster under TCG. sr_mod: cloud-init's
# ds-identify runs as a systemd generator, before udev, and finds a config drive only if the
# initramfs already made its cdrom a block device.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "ata_piix", "ata_generic",
                     "sym53c8xx", "mptspi", "mptsas", "vmw_pvscsi", "hv_vmbus", "hv_storvsc", "ext4", "sr_mod")
# GRUB's i386-pc diskboot.img: its blocklist (start LBA u64, sector count u16, load segment u16)
# sits in the last 12 bytes of core.img's first sector; boot.img holds core.img's LBA at 0x5c.
BLOCKLIST_OFFSET = SECTOR - 12
KERNEL_SECTOR_OFFSET = 0x5C
DRIVE_CHECK_OFFSET = 0x66
CORE_LOAD_SEGMENT = 0x820
MBR_CODE_BYTES = 440
I386_MODULES = ("biosdisk", "part_gpt", "ext2", "search", "search_fs_uuid", "linux", "boot")


def _run(*argv: str | Path, quiet: bool = True) -> None:
    print("+", " ".join(map(str, argv)), file=sys.stderr)
    subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL if quiet else None)


def cache_dir() -> Path:
    base = os.environ.get("IMGPIPE_CACHE_DIR") or Path.home() / ".cache" / "imgpipe"
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return Path(base) / "debian-guest" / digest


def cached(layout: str) -> Path:
    """The qcow2 of `layout`, building both layouts first if this builder has not run yet."""
    out = cache_dir()
    target = out / f"{layout}.qcow2"
    if target.exists():
        return target
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out / ".lock"):
        if not target.exists():
            build(out)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build(out: Path) -> None:
    """Write hybrid.qcow2 and uefi.qcow2 into `out` from one root filesystem."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="debian-guest-", dir=out) as work:
        root = Path(work) / "root"
        _bootstrap(root)
        _trim(root)
        kernel, initrd = _kernel(root)
        cfg = _grub_cfg(kernel, initrd)
        efi = _efi_loader(root, cfg)
        core = _bios_core(root, cfg)
        boot_img = (root / "usr/lib/grub/i386-pc/boot.img").read_bytes()
        for layout in LAYOUTS:
            raw = Path(work) / f"{layout}.raw"
            _disk(raw, root, efi, core if layout == "hybrid" else None, boot_img, Path(work))
            tmp = out / f".{layout}.qcow2.tmp"
            _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp)
            tmp.rename(out / f"{layout}.qcow2")
            raw.unlink()
    print(f"built {out} in {time.monotonic() - started:.0f} s", file=sys.stderr)


def _bootstrap(root: Path) -> None:
    """Debian's own packages from the host's apt sources; no recommends, no docs."""
    _run("mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
         *[f"--dpkgopt=path-exclude={p}" for p in EXCLUDES],
         "--customize-hook=echo debian-guest > $1/etc/hostname",
         f"--customize-hook=chroot $1 systemctl enable {' '.join(ENABLE_UNITS)}",
         f"--customize-hook=chroot $1 systemctl disable {' '.join(DISABLE_UNITS)}",
         "--customize-hook=rm -rf $1/var/cache/apt/* $1/var/lib/apt/lists/*",
         "bookworm", root)


def _trim(root: Path) -> None:
    for tree in UNUSED_MODULES:
        for found in (root / "usr/lib/modules").glob(f"*/kernel/{tree}"):
            shutil.rmtree(found)
    (root / "etc/initramfs-tools/modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
    conf = root / "etc/initramfs-tools/initramfs.conf"
    conf.write_text(conf.read_text().replace("MODULES=most", "MODULES=list"))
    for version in (root / "usr/lib/modules").iterdir():
        _run("chroot", root, "depmod", version.name)
    _run("chroot", root, "update-initramfs", "-u", "-k", "all")


def _kernel(root: Path) -> tuple[str, str]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise SystemExit(f"{root}/boot has no kernel or initrd")
    return f"/boot/{kernels[-1].name}", f"/boot/{initrds[-1].name}"


def _grub_cfg(kernel: str, initrd: str) -> str:
    return ("insmod part_gpt\ninsmod ext2\n"
            f"search --no-floppy --fs-uuid --set=root {ROOT_UUID}\n"
            f"linux {kernel} root=UUID={ROOT_UUID} rw console=ttyS0\n"
            f"initrd {initrd}\n"
            "boot\n")


def _efi_loader(root: Path, cfg: str) -> Path:
    (root / "tmp/grub.cfg").write_text(cfg)
    _run("chroot", root, "grub-mkstandalone", "-O", "x86_64-efi", "-o", "/tmp/BOOTX64.EFI",
         "--locales=", "--fonts=", "--themes=", "boot/grub/grub.cfg=/tmp/grub.cfg")
    return root / "tmp/BOOTX64.EFI"


def _bios_core(root: Path, cfg: str) -> bytes:
    (root / "tmp/early.cfg").write_text(cfg)
    _run("chroot", root, "grub-mkimage", "-O", "i386-pc", "-o", "/tmp/core.img", "-c", "/tmp/early.cfg",
         "-p", "/boot/grub", *I386_MODULES)
    return (root / "tmp/core.img").read_bytes()


def _disk(raw: Path, root: Path, efi: Path, core: bytes | None, boot_img: bytes, work: Path) -> None:
    """GPT on a sparse file; partitions filled from images made beside it."""
    with open(raw, "wb") as fh:
        fh.truncate(DISK_MIB * MIB)
    parts = ["-n", "1:1MiB:+1MiB", "-t", "1:EF02", "-c", "1:bios"] if core else []
    esp, rootp = (2, 3) if core else (1, 2)
    _run("sgdisk", *parts, "-n", f"{esp}:0:+{ESP_MIB}MiB", "-t", f"{esp}:EF00", "-c", f"{esp}:esp",
         "-n", f"{rootp}:0:0", "-t", f"{rootp}:8300", "-c", f"{rootp}:root", raw)
    starts = _starts(raw)
    esp_img = work / "esp.img"
    esp_img.unlink(missing_ok=True)
    _run("mkfs.vfat", "-i", ESP_SERIAL, "-n", "ESP", "-C", esp_img, str(ESP_MIB * 1024))
    _run("mmd", "-i", esp_img, "::/EFI", "::/EFI/BOOT")
    _run("mcopy", "-i", esp_img, efi, "::/EFI/BOOT/BOOTX64.EFI")
    root_img = work / "root.img"
    root_img.unlink(missing_ok=True)
    root_bytes = (DISK_MIB * MIB) - starts[rootp] * SECTOR - MIB  # the backup GPT lives in the last MiB
    _run("mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-L", "root", "-d", root, root_img,
         f"{root_bytes // 1024}k")
    _place(raw, esp_img, starts[esp])
    _place(raw, root_img, starts[rootp])
    if core:
        _install_bios(raw, core, boot_img, starts[1])


def _starts(raw: Path) -> dict[int, int]:
    out = subprocess.run(["sgdisk", "-p", str(raw)], check=True, capture_output=True, text=True).stdout
    starts = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[0].isdigit() and fields[1].isdigit():
            starts[int(fields[0])] = int(fields[1])
    return starts


def with_files(source: Path, dest: Path, files: dict[str, bytes]) -> Path:
    """A raw copy of the guest `source` with `files` (absolute paths in existing directories)
    written into its root filesystem: a variant that differs in a few configuration files costs a
    copy, not a second bootstrap. debugfs writes the ext4 partition in place, so no mount is needed."""
    _run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", source, dest)
    starts = _starts(dest)
    with tempfile.TemporaryDirectory(prefix="debian-guest-files-") as tmp:
        commands = []
        for number, (path, data) in enumerate(files.items()):
            host = Path(tmp) / str(number)
            host.write_bytes(data)
            parent, name = path.rsplit("/", 1)
            commands += [f"cd {parent or '/'}", f"rm {name}", f"write {host} {name}"]
        script = Path(tmp) / "commands"
        script.write_text("\n".join(commands) + "\n")
        _run("debugfs", "-w", "-f", script, f"{dest}?offset={starts[max(starts)] * SECTOR}")
    return dest


def _place(raw: Path, image: Path, start_sector: int) -> None:
    _run("dd", f"if={image}", f"of={raw}", "bs=1M", f"seek={start_sector * SECTOR}", "oflag=seek_bytes",
         "conv=notrunc,sparse", "status=none")
    image.unlink()


def _install_bios(raw: Path, core: bytes, boot_img: bytes, bios_part_sector: int) -> None:
    """What grub-bios-setup does for a GPT disk with a BIOS boot partition."""
    sectors = -(-len(core) // SECTOR)
    if sectors > MIB // SECTOR:
        raise SystemExit(f"core.img is {len(core)} bytes: larger than the BIOS boot partition")
    core = bytearray(core)
    struct.pack_into("<QHH", core, BLOCKLIST_OFFSET, bios_part_sector + 1, sectors - 1, CORE_LOAD_SEGMENT)
    mbr = bytearray(boot_img[:MBR_CODE_BYTES])
    struct.pack_into("<Q", mbr, KERNEL_SECTOR_OFFSET, bios_part_sector)
    struct.pack_into("<H", mbr, DRIVE_CHECK_OFFSET, 0x9090)  # hard disk: do not trust a floppy %dl
    with open(raw, "r+b") as fh:
        fh.write(mbr)  # bytes 440.. (disk signature, protective MBR entry) stay as sgdisk wrote them
        fh.seek(bios_part_sector * SECTOR)
        fh.write(core)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layout", choices=LAYOUTS, nargs="?", default="hybrid")
    args = parser.parse_args()
    print(cached(args.layout))


if __name__ == "__main__":
    main()
