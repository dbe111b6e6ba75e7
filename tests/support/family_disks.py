"""Whole-disk guests laid out like the real cloud images (Rocky 9 GenericCloud and its LVM variant,
Fedora Cloud on btrfs, Debian/Ubuntu on ext4, Windows Server on NTFS): sfdisk on a sparse 2 GiB
file, each filesystem built by its own mkfs from a host tree, the disk converted to qcow2.

Only what inspection reads is put in the trees, but at the paths and with the names the real
images use (usrmerge symlinks, .ko.xz modules, BLS loader entries)."""

from __future__ import annotations

import lzma
import subprocess
from dataclasses import dataclass
from pathlib import Path

import btrfs_fixture as bf
import lvm_disks as ld
import windows_fixture as wf
import xfs_fixtures as xf

from imgpipe_dev import sample_disk

MIB = 1 << 20
DISK_MIB = 2048
LINUX = ld.LINUX_TYPE
MSR = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
ROCKY_KERNEL = "5.14.0-427.el9.x86_64"
FEDORA_KERNEL = "6.8.5-301.fc40.x86_64"
UBUNTU_KERNEL = "6.8.0-31-generic"
ROCKY = ('NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
         'VERSION_ID="9.4"\nPLATFORM_ID="platform:el9"\nPRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n')
UBUNTU = ('PRETTY_NAME="Ubuntu 24.04 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION="24.04 LTS (Noble Numbat)"\n'
          'ID=ubuntu\nID_LIKE=debian\n')
# A trimmed copy of the stock cloud.cfg RHEL-family images ship: no datasource_list, so cloud-init
# probes its built-in list, which has OpenStack and ConfigDrive.
CLOUD_CFG = """users:
 - default
disable_root: true
mount_default_fields: [~, ~, 'auto', 'defaults,nofail,x-systemd.requires=cloud-init.service', '0', '2']
ssh_pwauth: false
cloud_init_modules:
 - migrator
 - seed_random
 - bootcmd
system_info:
  default_user:
    name: rocky
    lock_passwd: true
    groups: [adm, systemd-journal]
  distro: rhel
"""
# Where each storage driver lives in a RHEL 9 / Fedora kernel's module tree.
MODULE_DIRS = {"virtio_blk": "block", "virtio_scsi": "scsi", "vmw_pvscsi": "scsi", "hv_storvsc": "scsi",
               "mptspi": "message/fusion", "mptsas": "message/fusion", "ahci": "ata", "ata_piix": "ata"}
RHEL9_DRIVERS = ("virtio_blk", "virtio_scsi", "vmw_pvscsi", "hv_storvsc", "ahci", "ata_piix")


@dataclass(frozen=True)
class Part:
    name: str
    type: str
    mib: int
    image: Path | None = None  # its content, written at the partition's start


def disk(dest: Path, parts: list[Part], bios: bool = True) -> Path:
    """A qcow2 of a sparse 2 GiB GPT disk holding `parts` from 1 MiB on, with GRUB-like boot code."""
    raw = dest.with_suffix(".raw")
    layout = ld.gpt(raw, DISK_MIB, [(p.name, p.type, p.mib) for p in parts])
    if bios:
        with raw.open("r+b") as f:
            f.write(sample_disk.GRUB_LIKE_MBR)
    for part, where in zip(parts, layout, strict=True):
        if part.image is not None:
            assert part.image.stat().st_size <= where.size, part
            sample_disk._copy_into(part.image, raw, where.offset)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest))
    raw.unlink()
    return dest


def esp(image: Path, loaders: dict[str, bytes] | None = None, mib: int = 100) -> Path:
    """A FAT ESP with the fallback loader (and others) as mtools writes them."""
    with image.open("wb") as f:
        f.truncate(mib * MIB)
    _run("mkfs.vfat", "-F", "32", str(image))
    for path, blob in (loaders or {"EFI/BOOT/BOOTX64.EFI": sample_disk.PE_X86_64}).items():
        local = image.parent / Path(path).name
        local.write_bytes(blob)
        parts = Path(path).parent.parts
        for i in range(1, len(parts) + 1):
            _run("mmd", "-D", "s", "-i", str(image), "::/" + "/".join(parts[:i]), ok=(0, 1))
        _run("mcopy", "-o", "-i", str(image), str(local), f"::/{path}")
    return image


def xfs(image: Path, tree: Path, mib: int) -> Path:
    return xf.mkfs(image, tree, mib * MIB)


def ext4(image: Path, tree: Path, mib: int) -> Path:
    _run("mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{mib}M")
    return image


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _link(path: Path, target: str) -> None:
    """A symlink, unless the tree already has that name (btrfs_fixture's Fedora tree has some)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_symlink() and not path.exists():
        path.symlink_to(target)


def boot_tree(root: Path, kernel: str, machine_id: str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0") -> Path:
    """A separate /boot as RHEL 9 and Fedora write it: kernel, initramfs, BLS entry, grub2."""
    _write(root / f"vmlinuz-{kernel}", b"MZ" + bytes(510) + b"HdrS")
    _write(root / f"initramfs-{kernel}.img", lzma.compress(b"070701" + bytes(200)))
    _write(root / f"config-{kernel}", "CONFIG_X86_64=y\n")
    _write(root / "loader" / "entries" / f"{machine_id}-{kernel}.conf",
           f"title Linux ({kernel})\nversion {kernel}\nlinux /vmlinuz-{kernel}\n"
           f"initrd /initramfs-{kernel}.img\noptions root=UUID=00000000 console=ttyS0,115200n8 no_timer_check\n")
    _write(root / "grub2" / "grubenv", "# GRUB Environment Block\nsaved_entry=" + machine_id + "\n")
    return root


def linux_tree(root: Path, os_release: str, kernel: str, drivers: tuple[str, ...], *, agent: bool = True,
               datasources: str | None = None, usrmerge: bool = True) -> Path:
    """/ of a systemd distribution: os-release, init, qemu-ga, cloud-init and the kernel's storage
    modules (xz-compressed, as RHEL and Fedora ship them). usrmerge puts bin, sbin and lib under
    /usr behind symlinks, so every path inspection reads goes through one."""
    lib = root / "usr" / "lib" if usrmerge else root / "lib"
    if usrmerge:
        for name in ("bin", "sbin", "lib", "lib64"):
            _link(root / name, f"usr/{name}")
    _write(root / "usr" / "lib" / "os-release", os_release)
    _link(root / "etc" / "os-release", "../usr/lib/os-release")
    if not (root / "etc" / "fstab").exists():
        _write(root / "etc" / "fstab", "UUID=00000000 / xfs defaults 0 0\n")
    _write(root / "etc" / "machine-id", "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n")
    _write(root / "usr" / "lib" / "systemd" / "systemd", sample_disk.ELF_X86_64)
    _link(root / "usr" / "sbin" / "init", "../lib/systemd/systemd")
    _write(root / "usr" / "bin" / "sh", sample_disk.ELF_X86_64)
    if agent:
        _write(root / "usr" / "bin" / "qemu-ga", sample_disk.ELF_X86_64)
    _write(root / "usr" / "bin" / "cloud-init", "#!/usr/bin/python3\n")
    _write(root / "usr" / "lib" / "python3.9" / "site-packages" / "cloudinit" / "version.py",
           '__VERSION__ = "23.4"\n')
    _write(root / "etc" / "cloud" / "cloud.cfg", CLOUD_CFG)
    _write(root / "etc" / "cloud" / "cloud.cfg.d" / "05_logging.cfg", "output: {all: '| tee -a /var/log/x'}\n")
    if datasources is not None:
        _write(root / "etc" / "cloud" / "cloud.cfg.d" / "99-datasource.cfg", f"datasource_list: {datasources}\n")
    modules = lib / "modules" / kernel
    for name in drivers:
        _write(modules / "kernel" / "drivers" / MODULE_DIRS[name] / f"{name}.ko.xz", lzma.compress(b"\x7fELF"))
    for name in ("modules.dep", "modules.alias"):
        _write(modules / name, "")
    _write(modules / "modules.builtin", "kernel/drivers/scsi/sd_mod.ko\nkernel/drivers/ata/libata.ko\n")
    _crowd(root / "usr" / "bin", "tool-{:04d}", 1500)  # directories as large as a real install's:
    _crowd(modules / "kernel" / "drivers" / "scsi", "drv_{:03d}.ko.xz", 300)  # xfs block/leaf forms, not
    _crowd(lib / "firmware", "fw-{:04d}.bin", 800)  # only the shortform a handful of entries gets
    return root


def _crowd(folder: Path, pattern: str, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / pattern.format(i)).write_bytes(b"")


def rocky(dest: Path, *, drivers: tuple[str, ...] = RHEL9_DRIVERS, datasources: str | None = None,
          loop: bool = False) -> Path:
    """Rocky 9 GenericCloud: biosboot, ESP, /boot on xfs, / on xfs. /boot is the larger partition,
    so only its content (os-release) tells which one is the root. loop: /etc/cloud becomes /etc
    itself (an xfs directory entry pointing at its own directory)."""
    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    boot = xfs(work / "boot.img", boot_tree(work / "boot", ROCKY_KERNEL), 1000)
    root_tree = linux_tree(work / "root", ROCKY, ROCKY_KERNEL, drivers, datasources=datasources)
    root = xfs(work / "root.img", root_tree, 900)
    if loop:
        etc = xf.inode_number(root, "/etc")
        names = [xf.db(root, f"inode {etc}", f"print u3.sfdir3.list[{i}].name").split("=")[1].strip()
                 for i in range(2)]
        index = names.index('"cloud"')
        xf.db(root, f"inode {etc}", f"write u3.sfdir3.list[{index}].inumber.i4 {etc}", expert=True)
    return disk(dest, [Part("biosboot", ld.BIOS_TYPE, 1), Part("efi", ld.ESP_TYPE, 100, esp(work / "esp.img")),
                       Part("boot", LINUX, 1000, boot), Part("root", LINUX, 900, root)])


def rocky_lvm(dest: Path) -> Path:
    """Rocky 9's LVM image: biosboot, ESP, /boot on xfs, and a PV of VG rl holding swap and root (xfs)."""
    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    raw = dest.with_suffix(".raw")
    layout = ld.gpt(raw, DISK_MIB, [("biosboot", ld.BIOS_TYPE, 1), ("efi", ld.ESP_TYPE, 100),
                                    ("boot", LINUX, 500), ("lvm", ld.LVM_TYPE, 1400)])
    with raw.open("r+b") as f:
        f.write(sample_disk.GRUB_LIKE_MBR)
    sample_disk._copy_into(esp(work / "esp.img"), raw, layout[1].offset)
    sample_disk._copy_into(xfs(work / "boot.img", boot_tree(work / "boot", ROCKY_KERNEL), 500), raw, layout[2].offset)
    root = xfs(work / "root.img", linux_tree(work / "root", ROCKY, ROCKY_KERNEL, RHEL9_DRIVERS), 1100)
    ld.rocky_vg(raw, layout[3], root, 1100)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest))
    raw.unlink()
    return dest


def fedora(dest: Path) -> Path:
    """Fedora Cloud 40: biosboot, ESP, /boot on ext4, btrfs whose top level is the default
    subvolume and whose fstab mounts subvolume root at / (zstd, zlib and lzo compressed files)."""
    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    host = bf.fedora_tree(work / "host")
    linux_tree(host / "root", bf.OS_RELEASE, FEDORA_KERNEL, (*RHEL9_DRIVERS, "mptspi", "mptsas"), agent=True)
    root = bf.fedora(work / "root.img", host, 1200 * MIB)
    boot = ext4(work / "boot.img", boot_tree(work / "boot", FEDORA_KERNEL), 600)
    return disk(dest, [Part("biosboot", ld.BIOS_TYPE, 1), Part("efi", ld.ESP_TYPE, 100, esp(work / "esp.img")),
                       Part("boot", LINUX, 600, boot), Part("root", LINUX, 1200, root)])


def ubuntu(dest: Path) -> Path:
    """Ubuntu 24.04 cloud image: ext4 root as partition 1 (last on the disk), BIOS boot, ESP."""
    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    tree = linux_tree(work / "root", UBUNTU, UBUNTU_KERNEL, ("virtio_blk", "vmw_pvscsi", "mptspi"))
    boot = tree / "boot"
    _write(boot / f"vmlinuz-{UBUNTU_KERNEL}", b"MZ")
    root = ext4(work / "root.img", tree, 1800)
    raw = dest.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(DISK_MIB * MIB)
    table = ("label: gpt\nstart=227328, size=3686400, type=L, name=root\nstart=2048, size=8192, "
             f"type={ld.BIOS_TYPE}\nstart=10240, size=217088, type=U\n")
    subprocess.run(["sfdisk", "-q", str(raw)], input=table.encode(), check=True)
    with raw.open("r+b") as f:
        f.write(sample_disk.GRUB_LIKE_MBR)
    sample_disk._copy_into(esp(work / "esp.img", mib=100), raw, 10240 * 512)
    sample_disk._copy_into(root, raw, 227328 * 512)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest))
    raw.unlink()
    return dest


def cloudbase_conf(services: list[str] | None) -> bytes:
    lines = ["[DEFAULT]", "username=Admin", "groups=Administrators", "inject_user_password=true"]
    if services is not None:
        lines.append("metadata_services=" + ",".join(services))
    return ("\r\n".join(lines) + "\r\n").encode()


def windows(dest: Path, w: wf.Windows, services: list[str] | None, boot_manager: bytes = sample_disk.PE_X86_64) -> Path:
    """Windows as its installer lays out a GPT disk: ESP, MSR, C: on NTFS (UEFI only)."""
    work = dest.parent / (dest.stem + ".d")
    work.mkdir()
    files = wf.windows_files(w) | {wf.CLOUDBASE_CONF: cloudbase_conf(services)}
    ntfs = wf.ntfs_volume(work / "c.img", files, 1800 * MIB)
    loaders = {"EFI/Microsoft/Boot/bootmgfw.efi": boot_manager, "EFI/BOOT/BOOTX64.EFI": boot_manager}
    return disk(dest, [Part("esp", ld.ESP_TYPE, 100, esp(work / "esp.img", loaders)), Part("msr", MSR, 16),
                       Part("c", BASIC_DATA, 1800, ntfs)], bios=False)


def _run(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    proc = subprocess.run(argv, capture_output=True, check=False)
    assert proc.returncode in ok, f"{' '.join(argv)}: {proc.stderr.decode(errors='replace')}"
