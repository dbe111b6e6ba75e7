"""Inspect a guest disk once: boot paths, architecture, root filesystem and what it holds."""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
from pathlib import Path

from imgpipe import nbd
from imgpipe.errors import GuestInspectionError
from imgpipe.guest import esp, ntfs, reader, signatures, tree
from imgpipe.guest.ext_blocks import ExtBlocks, Unsupported
from imgpipe.guest.extfs import ExtTree
from imgpipe.guest.facts import Fact, GuestFacts
from imgpipe.source import partitions
from imgpipe.source.inspect import ImageInfo
from imgpipe.source.partitions import Partition

LOG = logging.getLogger("imgpipe.guest")
BOOT_CODE = 440
LINUX_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i686", 0xF3: "riscv64", 0x28: "armv7l",
                0x16: "s390x", 0x15: "ppc64le"}
INIT_PATHS = ("/sbin/init", "/usr/lib/systemd/systemd", "/lib/systemd/systemd")
AGENT_PATHS = ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga")
ELF_PATHS = ("/sbin/init", "/bin/sh", "/usr/bin/env")
# Storage driver -> its directory under lib/modules/<version>/kernel/.
DRIVERS = {"virtio_blk": "drivers/block", "virtio_scsi": "drivers/scsi", "vmw_pvscsi": "drivers/scsi",
           "hv_storvsc": "drivers/scsi", "sym53c8xx": "drivers/scsi/sym53c8xx_2",
           "mptspi": "drivers/message/fusion", "mptsas": "drivers/message/fusion",
           "ahci": "drivers/ata", "ata_piix": "drivers/ata"}
_MODULE = re.compile(r"^(.+?)\.ko(\.xz|\.zst|\.gz)?$")


def inspect_guest(info: ImageInfo, work: Path) -> GuestFacts:
    """Every fact about the guest, read without mounting or running anything from it."""
    facts = GuestFacts()
    parts: list[Partition | None] = list(info.partitions) if info.table else [None]
    found = {p.number if p else 0: _probe(info, p, work) for p in parts}
    facts.bios = _bios(info.head, info)
    for part in parts:
        if part is not None and part.kind == "efi" and found[part.number] == "vfat":
            image = reader.extract(info, part, work / f"part{part.number}.raw")
            facts.uefi_loaders += esp.loaders(image, f"partition {part.number} (ESP)")
    loader_arch = {f.value["architecture"] for f in facts.uefi_loaders}
    if loader_arch:
        facts.architecture = Fact(min(loader_arch), facts.uefi_loaders[0].evidence)
    root = _root(parts, found)
    if root is not None:
        _read_root(info, root, found[root.number], work, facts)
    elif not info.table and found[0] in LINUX_FILESYSTEMS:  # a bare filesystem (lxc/uml input)
        _read_root(info, None, found[0], work, facts)
    elif info.table:
        facts.unchecked.append("no Linux root filesystem (ext2/3/4, xfs, btrfs) found")
    for part in parts:
        if found[part.number if part else 0] == "ntfs":
            _read_ntfs(info, part, work, facts)
    return facts


def _probe(info: ImageInfo, part: Partition | None, work: Path) -> str | None:
    if part is None and len(info.head) >= signatures.PROBE_BYTES:  # a bare filesystem: its start is the head
        return signatures.filesystem(info.head[:signatures.PROBE_BYTES])
    name = f"probe{part.number if part else 0}.raw"
    return signatures.filesystem(reader.probe(info, part, work / name, signatures.PROBE_BYTES))


def _label(part: Partition | None) -> str:
    return f"partition {part.number}" if part else "whole disk"


def _bios(head: bytes, info: ImageInfo) -> Fact | None:
    code = head[:BOOT_CODE]
    if not code.strip(b"\0") or head[510:512] != b"\x55\xaa":
        return None
    loader = "GRUB" if b"GRUB" in code else "boot code"
    where = f"MBR bytes 0-{BOOT_CODE - 1} ({loader})"
    if info.table == "gpt":
        bios_boot = next((p for p in info.partitions if p.kind == "bios-boot"), None)
        if bios_boot is None:
            return None  # GPT boot code has nowhere to load its core from
        return Fact(loader.lower(), f"{where}; BIOS boot partition {bios_boot.number}")
    active = [n for n in range(4) if head[446 + 16 * n] == 0x80]
    if not active and loader != "GRUB":
        return None
    tail = f"; active partition {active[0] + 1}" if active else ""
    return Fact(loader.lower(), where + tail)


def _root(parts: list[Partition | None], found: dict[int, str | None]) -> Partition | None:
    """Typed root first, then Linux-typed, then any partition whose signature is a Linux fs."""
    linux = [p for p in parts if p is not None and found[p.number] in LINUX_FILESYSTEMS]
    for tier in ([p for p in linux if p.type in partitions.ROOT_TYPES],
                 [p for p in linux if p.kind == "linux"], linux):
        if tier:
            return max(tier, key=lambda p: p.size)
    return None


def _read_root(info: ImageInfo, part: Partition | None, fs: str | None, work: Path,
               facts: GuestFacts) -> None:
    label = _label(part)
    typed = part is not None and part.kind != "other"
    how = (f"type {part.kind} ({part.type})" if typed and part else
           f"type {part.type} says nothing; found by its signature" if part else
           "no partition table; found by its signature")
    facts.root = Fact({"partition": part.number if part else 0, "filesystem": fs,
                       "found_by": "type" if typed else "signature"}, f"{label} ({how}, {fs})")
    if fs not in ("ext2", "ext3", "ext4"):
        facts.unchecked.append(f"{label} is {fs}: no userspace reader is used for it, so os-release, "
                               "init, guest agent and kernel drivers were not checked")
        return
    _read_ext(info, part, work, label, facts)


def _read_ext(info: ImageInfo, part: Partition | None, work: Path, label: str, facts: GuestFacts) -> None:
    """Over NBD, only the blocks the lookups need; debugfs on a full copy of the partition
    for a filesystem ext_blocks does not parse (facts found before it gave up are dropped)."""
    name = f"{info.path}: {label}"
    try:
        with nbd.export(info.window(part), name) as disk:
            found = dataclasses.replace(facts, unchecked=list(facts.unchecked))  # the only list it extends
            _read_linux(ExtBlocks(disk.read, disk.size, name), label, found)
    except nbd.NbdError as exc:
        raise GuestInspectionError(str(exc)) from exc
    except Unsupported as exc:
        LOG.info("%s: %s: reading it with debugfs from a full copy", name, exc)
        image = reader.extract(info, part, work / f"root{part.number if part else 0}.raw")
        _read_linux(ExtTree(image, name), label, facts)
        return
    vars(facts).update(vars(found))


def _read_linux(guest: tree.Tree, label: str, facts: GuestFacts) -> None:
    _os_release(guest, label, facts)
    facts.init = _first_file(guest, INIT_PATHS, label)
    facts.guest_agent = _first_file(guest, AGENT_PATHS, label)
    if facts.architecture is None:
        facts.architecture = _elf_arch(guest, label)
    facts.drivers = _drivers(guest, label)
    if facts.drivers is None:
        facts.unchecked.append(f"{label}: no kernel module tree under /lib/modules; disk driver checks "
                               "not made")


def _os_release(guest: tree.Tree, label: str, facts: GuestFacts) -> None:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        got = tree.read(guest, path, 16384)
        if got is None:
            continue
        fields: dict[str, str] = {}
        for line in got[1].decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in ("ID", "ID_LIKE", "VERSION_ID", "PRETTY_NAME"):
                words = shlex.split(value, posix=True) if value.strip() else [""]
                fields[key.strip()] = words[0] if words else ""
        evidence = f"{label} {path}" + (f" -> {got[0]}" if got[0] != path else "")
        facts.os_release = Fact(fields, evidence)
        facts.os_type = Fact("linux", evidence)
        return
    facts.unchecked.append(f"{label}: no /etc/os-release; os_distro/os_version not derived")


def _first_file(guest: tree.Tree, paths: tuple[str, ...], label: str) -> Fact | None:
    for path in paths:
        real = tree.resolve(guest, path)
        if real is not None and (node := guest.lstat(real)) is not None and node.kind == "file":
            return Fact(real, f"{label} {path}" + (f" -> {real}" if real != path else ""))
    return None


def _elf_arch(guest: tree.Tree, label: str) -> Fact | None:
    for path in ELF_PATHS:
        got = tree.read(guest, path, 64)
        if got and got[1][:4] == b"\x7fELF" and len(got[1]) >= 20:
            little = got[1][5] == 1
            machine = int.from_bytes(got[1][18:20], "little" if little else "big")
            if machine in ELF_MACHINES:
                return Fact(ELF_MACHINES[machine], f"{label} {got[0]} (ELF e_machine {machine:#x})")
    return None


def _drivers(guest: tree.Tree, label: str) -> Fact | None:
    """Storage drivers of the newest kernel: built in (modules.builtin) or as a .ko module."""
    listing = tree.listdir(guest, "/lib/modules")
    if listing is None or not listing[1]:
        return None
    base = f"{listing[0]}/{max(listing[1], key=_version_key)}"
    have: dict[str, str] = {}
    builtin = tree.read(guest, f"{base}/modules.builtin", 1 << 20)
    if builtin:
        for line in builtin[1].decode(errors="replace").splitlines():
            name = _MODULE.match(line.rsplit("/", 1)[-1])
            if name and name.group(1).replace("-", "_") in DRIVERS:
                have[name.group(1).replace("-", "_")] = f"built in ({base}/modules.builtin)"
    for directory in sorted(set(DRIVERS.values())):
        entries = tree.listdir(guest, f"{base}/kernel/{directory}")
        for entry in entries[1] if entries else []:
            name = _MODULE.match(entry)
            if name and name.group(1) in DRIVERS and DRIVERS[name.group(1)] == directory:
                have.setdefault(name.group(1), f"{base}/kernel/{directory}/{entry}")
    return Fact(dict(sorted(have.items())), f"{label} {base}")


def _version_key(name: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", name)]


def _read_ntfs(info: ImageInfo, part: Partition | None, work: Path, facts: GuestFacts) -> None:
    label = _label(part)
    if not ntfs.available():
        facts.os_type = facts.os_type or Fact("windows", f"{label} (NTFS signature only)")
        facts.unchecked.append(f"{label} is NTFS but ntfsls (ntfs-3g) is not installed: the Windows "
                               "installation was not checked")
        return
    image = reader.extract(info, part, work / f"ntfs{part.number if part else 0}.raw")
    found = ntfs.windows(image, f"{info.path}: {label}")
    if found is not None and facts.os_type is None:
        facts.os_type = found
        facts.unchecked.append(f"{label}: Windows version not read (no registry reader); "
                               "os_distro=windows without os_version")
