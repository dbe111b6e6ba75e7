"""Inspect a guest disk once: boot paths, architecture, root filesystem and what it holds."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgpipe import nbd
from imgpipe.errors import GuestInspectionError
from imgpipe.guest import cloudinit, windows
from imgpipe.guest.facts import Fact, GuestFacts
from imgpipe.guest.fs import fat, ntfs, partition, registry, tree
from imgpipe.guest.fs.ext import Unsupported
from imgpipe.guest.fs.registry import Format, Opened, Role
from imgpipe.source import partitions
from imgpipe.source.inspect import ImageInfo
from imgpipe.source.partitions import Partition

LOG = logging.getLogger("imgpipe.guest")
BOOT_CODE = 440
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


@dataclass(frozen=True, kw_only=True)
class Volume:
    """A Linux filesystem on a partition, or on an LVM logical volume inside one."""

    label: str  # "partition 3", "partition 4 LV rl/root"
    fs: Format
    part: Partition | None
    read: Callable[[int, int], bytes]
    size: int
    lv: str = ""  # "vg/lv" when on LVM
    typed: bool = False  # the partition's type says Linux root / Linux data


OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


def inspect_guest(info: ImageInfo, work: Path) -> GuestFacts:
    """Every fact about the guest, read without mounting or running anything from it."""
    facts = GuestFacts()
    parts: list[Partition | None] = list(info.partitions) if info.table else [None]
    found = {p.number if p else 0: _probe(info, p, work) for p in parts}
    roles = {n: f.role if f else None for n, f in found.items()}
    facts.bios = _bios(info.head, info)
    for part in parts:
        if part is not None and part.kind == "efi" and roles[part.number] is Role.ESP:
            image = partition.extract(info, part, work / f"part{part.number}.raw")
            facts.uefi_loaders += fat.loaders(image, f"partition {part.number} (ESP)")
    loader_arch = {f.value["architecture"] for f in facts.uefi_loaders}
    if loader_arch:
        facts.architecture = Fact(min(loader_arch), facts.uefi_loaders[0].evidence)
    try:
        with contextlib.ExitStack() as exports:
            volumes = _volumes(info, parts, found, exports, facts)
            if volumes:
                _read_root(info, volumes, work, facts)
            elif (info.table and not any(found.values())) \
                    or any(r in (Role.VOLUMES, Role.LINUX) for r in roles.values()):
                facts.unchecked.append("no Linux root filesystem (ext2/3/4, xfs, btrfs, on LVM or not) found")
    except nbd.NbdError as exc:
        raise GuestInspectionError(str(exc)) from exc
    for part in parts:
        if roles[part.number if part else 0] is Role.WINDOWS:
            _read_ntfs(info, part, work, facts)
    return facts


def _probe(info: ImageInfo, part: Partition | None, work: Path) -> Format | None:
    if part is None and len(info.head) >= registry.PROBE_BYTES:  # a bare filesystem: its start is the head
        head = info.head[:registry.PROBE_BYTES]
    else:
        name = f"probe{part.number if part else 0}.raw"
        head = partition.probe(info, part, work / name, registry.PROBE_BYTES)
    return registry.probe(head)


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


def _volumes(info: ImageInfo, parts: list[Partition | None], found: dict[int, Format | None],
             exports: contextlib.ExitStack, facts: GuestFacts) -> list[Volume]:
    """Every Linux filesystem, on a partition or an LVM volume, in the order a root is looked
    for: typed root partitions, Linux-typed ones, any other, then logical volumes; the largest first."""
    plain: list[Volume] = []
    on_lvm: list[Volume] = []
    for part in parts:
        fs = found[part.number if part else 0]
        if fs is None or (fs.open is None and fs.volumes is None):
            continue
        label = _label(part)
        disk = exports.enter_context(nbd.export(info.window(part), f"{info.path}: {label}"))
        if fs.volumes is None:
            typed = part is not None and (part.type in partitions.ROOT_TYPES or part.kind == "linux")
            plain.append(Volume(label=label, fs=fs, part=part, read=disk.read, size=disk.size, typed=typed))
            continue
        lvs, skipped = fs.volumes(disk.read, disk.size, label)
        facts.unchecked += [f"{label}: {note}" for note in skipped]
        for lv in lvs:
            lv_fs = registry.filesystem(lv.read(0, min(registry.PROBE_BYTES, lv.size)))
            if lv_fs is not None and lv_fs.open is not None:
                on_lvm.append(Volume(label=f"{label} LV {lv.vg}/{lv.name}", fs=lv_fs, part=part,
                                     read=lv.read, size=lv.size, lv=f"{lv.vg}/{lv.name}"))
    rank = {id(v): (0 if v.part is not None and v.part.type in partitions.ROOT_TYPES else 1 if v.typed else 2)
            for v in plain}
    return sorted(plain, key=lambda v: (rank[id(v)], -v.size)) + sorted(on_lvm, key=lambda v: -v.size)


def _read_root(info: ImageInfo, volumes: list[Volume], work: Path, facts: GuestFacts) -> None:
    """The root is the filesystem holding os-release (not the largest partition: RHEL-family
    images keep /boot apart); a separate /boot is the one holding kernels or a boot loader."""
    opened: list[tuple[Volume, Opened]] = []
    root: tuple[Volume, Opened] | None = None
    for volume in volumes:
        got = _open(info, volume, work, facts)
        if got is None:
            continue
        opened.append((volume, got))
        if root is None and any(tree.read(got.tree, path, 1) is not None for path in OS_RELEASE):
            root = opened[-1]
    if root is None:
        if not opened:
            return
        root = opened[0]
        facts.unchecked.append(f"no filesystem holds /etc/os-release; {root[0].label} taken as the root")
    volume, fs = root
    found_by = "os-release" if len(opened) > 1 and volume is not volumes[0] else \
        ("type" if volume.typed else "signature")
    value: dict[str, object] = {"partition": volume.part.number if volume.part else 0, "filesystem": volume.fs.name,
                                "found_by": found_by}
    if volume.lv:
        value["volume"] = volume.lv
    if fs.subvolume:
        value["subvolume"] = fs.subvolume
    how = volume.fs.name + (f", LVM {volume.lv}" if volume.lv else "") + \
        (f", btrfs subvolume {fs.subvolume}: {fs.why}" if fs.why else "")
    facts.root = Fact(value, f"{volume.label} ({how}; root found by {found_by})")
    boot = next(((v, o.tree) for v, o in opened if v is not volume and _is_boot(o.tree)), None)
    if boot is not None:
        facts.boot = Fact({"partition": boot[0].part.number if boot[0].part else 0, "filesystem": boot[0].fs.name},
                          f"{boot[0].label} holds kernels or a boot loader at its top: /boot")
    boot_tree, boot_label = (boot[1], boot[0].label) if boot else (None, "")
    found = dataclasses.replace(facts, unchecked=list(facts.unchecked))  # the only list it extends
    try:
        _read_linux(fs.tree, volume.label, found, boot_tree, boot_label)
    except Unsupported as exc:  # met on the way (an inline_data inode): start over with debugfs
        fallback = _debugfs(info, volume, work, exc)
        if fallback is None:
            raise GuestInspectionError(f"{info.path}: {volume.label}: {exc}") from exc
        found = dataclasses.replace(facts, unchecked=list(facts.unchecked))
        _read_linux(fallback.tree, volume.label, found, boot_tree, boot_label)
    vars(facts).update(vars(found))


def _open(info: ImageInfo, volume: Volume, work: Path, facts: GuestFacts) -> Opened | None:
    """The volume's tree, or None (noted) for a filesystem its reader does not parse."""
    assert volume.fs.open is not None  # _volumes takes only formats it can open
    try:
        return volume.fs.open(volume.read, volume.size, f"{info.path}: {volume.label}")
    except Unsupported as exc:
        fallback = _debugfs(info, volume, work, exc)
        if fallback is None:
            facts.unchecked.append(f"{volume.label} is {volume.fs.name} with {exc}: not read")
        return fallback


def _debugfs(info: ImageInfo, volume: Volume, work: Path, why: Unsupported) -> Opened | None:
    """What the in-process reader does not parse (ext: inline_data, meta_bg...), read from a full
    copy of its partition (ext: by debugfs)."""
    if volume.fs.open_copy is None or volume.lv:
        return None
    LOG.info("%s: %s: %s: reading it with debugfs from a full copy", info.path, volume.label, why)
    image = partition.extract(info, volume.part, work / f"root{volume.part.number if volume.part else 0}.raw")
    return volume.fs.open_copy(image, f"{info.path}: {volume.label}")


def _is_boot(guest: tree.Tree) -> bool:
    names = guest.listdir("/") if guest.lstat("/") is not None else []
    return any(n.startswith("vmlinuz-") for n in names) \
        or (any(n in ("grub", "grub2", "loader") for n in names) and "etc" not in names)


def _read_linux(guest: tree.Tree, label: str, facts: GuestFacts, boot: tree.Tree | None = None,
                boot_label: str = "") -> None:
    _os_release(guest, label, facts)
    facts.init = _first_file(guest, INIT_PATHS, label)
    facts.guest_agent = _first_file(guest, AGENT_PATHS, label)
    if facts.architecture is None:
        facts.architecture = _elf_arch(guest, label)
    facts.kernel = _kernel(guest, label, boot, boot_label)
    facts.drivers = _drivers(guest, label, facts.kernel.value if facts.kernel else None)
    facts.cloud_init = cloudinit.read_cloud_init(guest, label, boot, boot_label)
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


def _kernel(guest: tree.Tree, label: str, boot: tree.Tree | None, boot_label: str) -> Fact | None:
    """The newest kernel in /boot (or the separate /boot) that has a module tree; else the
    newest module tree (a guest booting a kernel from outside, e.g. lxc)."""
    modules = tree.listdir(guest, "/lib/modules")
    have = set(modules[1]) if modules else set()
    for where, boot_tree, prefix in ((boot_label, boot, "/"), (label, guest, "/boot/")):
        listing = tree.listdir(boot_tree, prefix) if boot_tree is not None else None
        kernels = [n.removeprefix("vmlinuz-") for n in (listing[1] if listing else []) if n.startswith("vmlinuz-")]
        usable = [k for k in kernels if k in have]
        if usable:
            newest = max(usable, key=_version_key)
            return Fact(newest, f"{where} {prefix}vmlinuz-{newest}; modules in {label} /lib/modules/{newest}")
    if have:
        newest = max(have, key=_version_key)
        return Fact(newest, f"{label} /lib/modules/{newest} (newest module tree; no matching kernel in /boot)")
    return None


def _drivers(guest: tree.Tree, label: str, kernel: str | None) -> Fact | None:
    """Storage drivers of the kernel that boots: built in (modules.builtin) or as a .ko module."""
    listing = tree.listdir(guest, "/lib/modules")
    if listing is None or not listing[1] or kernel is None:
        return None
    base = f"{listing[0]}/{kernel}"
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
    image = partition.extract(info, part, work / f"ntfs{part.number if part else 0}.raw")
    volume = ntfs.NtfsTree(image, f"{info.path}: {label}")
    found = windows.read_windows(volume, label, work)
    if found is None or facts.os_type is not None:
        return
    facts.os_type = Fact("windows", found.version.evidence)
    facts.windows = found.version
    facts.windows_drivers = found.drivers
    facts.cloudbase_init = windows.cloudbase_init(volume, label)
