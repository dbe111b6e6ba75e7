"""Small synthetic guest disks for the guest inspection tests: sfdisk on a sparse file,
mkfs -d / mtools to populate, dd-style writes of boot bytes. No root, no mounts."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe_dev import sample_disk

MIB = 1 << 20
MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
OS_RELEASES = {
    "debian12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    "ubuntu2204": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nVERSION_ID="22.04"\nID_LIKE=debian\n',
    "rhel9": 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="9.2"\nPRETTY_NAME="Red Hat Enterprise '
             'Linux 9.2 (Plow)"\n',
}


@dataclass
class Guest:
    loaders: dict[str, bytes] = field(default_factory=lambda: {"EFI/BOOT/BOOTX64.EFI": sample_disk.PE_X86_64})
    bios: bool = False
    os_release: str | None = "debian12"
    init: bool = True
    agent: bool = False
    modules: tuple[str, ...] = sample_disk.SAMPLE_MODULES
    builtin: tuple[str, ...] = ()
    root_type: str = "L"
    fs: str = "ext4"  # ext4, xfs, ntfs
    ext_features: str = ""  # mkfs.ext4 -O, e.g. "inline_data"
    corrupt: bool = False
    links: dict[str, str] = field(default_factory=dict)  # path in the guest -> symlink target
    elf: bytes = sample_disk.ELF_X86_64  # /sbin/init's (and qemu-ga's) ELF header
    files: dict[str, bytes] = field(default_factory=dict)  # path in the root (e.g. boot/vmlinuz-6.1.0-test) -> bytes


def build(dest: Path, g: Guest) -> Path:
    work = dest.parent / (dest.name + ".d")
    work.mkdir()
    disk = work / "disk.raw"
    root_mib = 320 if g.fs == "xfs" else 58  # mkfs.xfs wants 300 MB
    with disk.open("wb") as f:
        f.truncate((root_mib + 22) * MIB)
    table = "label: gpt\nstart=2048, size=32768, type=U, name=efi\nsize=2048, type=" + \
            ("21686148-6449-6E6F-744E-656564454649" if g.bios else "L") + ", name=bios\n" \
            f"size={root_mib * 2048}, type={g.root_type}, name=root\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=table.encode(), check=True)
    if g.bios:
        with disk.open("r+b") as f:
            f.write(sample_disk.GRUB_LIKE_MBR)
    esp = work / "esp.img"
    with esp.open("wb") as f:
        f.truncate(16 * MIB)
    _run("mkfs.vfat", str(esp))
    for path, blob in g.loaders.items():
        local = work / Path(path).name
        local.write_bytes(blob)
        parts = Path(path).parent.parts
        for i in range(1, len(parts) + 1):
            _run("mmd", "-D", "s", "-i", str(esp), "::/" + "/".join(parts[:i]), ok=(0, 1))
        _run("mcopy", "-o", "-i", str(esp), str(local), f"::/{path}")
    root = work / "root.img"
    _root_fs(root, work / "tree", g, root_mib)
    sample_disk._copy_into(esp, disk, MIB)
    sample_disk._copy_into(root, disk, 18 * MIB)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(dest))
    return dest


def _root_fs(image: Path, tree: Path, g: Guest, mib: int) -> None:
    etc = tree / "etc"
    etc.mkdir(parents=True)
    if g.os_release:
        (etc / "os-release").write_text(OS_RELEASES[g.os_release])
    if g.init:
        (tree / "sbin").mkdir()
        (tree / "sbin" / "init").write_bytes(g.elf)
    if g.agent:
        (tree / "usr" / "sbin").mkdir(parents=True)
        (tree / "usr" / "sbin" / "qemu-ga").write_bytes(g.elf)
    base = tree / "lib" / "modules" / "6.1.0-test"
    for rel in g.modules:
        (base / "kernel" / "drivers" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "kernel" / "drivers" / rel).write_bytes(b"")
    if g.builtin:
        base.mkdir(parents=True, exist_ok=True)
        (base / "modules.builtin").write_text("".join(f"kernel/drivers/{m}\n" for m in g.builtin))
    for path, data in g.files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    for path, target in g.links.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).symlink_to(target)
    if g.fs == "ext4":
        features = ["-O", g.ext_features] if g.ext_features else []
        _run("mkfs.ext4", "-q", "-F", *features, "-d", str(tree), str(image), f"{mib}M")
    elif g.fs == "xfs":
        with image.open("wb") as f:
            f.truncate(mib * MIB)
        _run("mkfs.xfs", "-q", str(image))
    elif g.fs == "ntfs":
        with image.open("wb") as f:
            f.truncate(mib * MIB)
        _run("mkntfs", "-q", "-F", "-Q", str(image))
    if g.corrupt:
        with image.open("r+b") as f:  # keep the ext4 magic, wreck the rest of the superblock
            f.seek(1024)
            f.write(b"\xff" * 56)
            f.seek(4096)
            f.write(b"\xff" * 4096)


def _run(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    proc = subprocess.run(argv, capture_output=True, check=False)
    assert proc.returncode in ok, proc.stderr
