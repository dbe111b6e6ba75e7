"""Inspect a guest disk once: boot paths, architecture, root filesystem and what it holds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgpipe import nbd
from imgpipe.errors import GuestInspectionError
from imgpipe.guest import architecture, efi, linux, secureboot, windows
from imgpipe.guest.facts import Fact, GuestFacts
from imgpipe.guest.fs import fat, ntfs, partition, registry, tree
from imgpipe.guest.fs.budget import Budget
from imgpipe.guest.fs.ext import Unsupported
from imgpipe.guest.fs.registry import Format, Opened, Role
from imgpipe.source import partitions
from imgpipe.source.inspect import ImageInfo
from imgpipe.source.partitions import Partition

LOG = logging.getLogger("imgpipe.guest")
BOOT_CODE = 440


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




def inspect_guest(info: ImageInfo, disk: nbd.Export, work: Path) -> GuestFacts:
    """Every fact about the guest, read without mounting or running anything from it.

    Everything on the hot path (partition probes, the ESP, filesystems, LVM) is read through
    `disk`, the one qemu-nbd export of the whole image; only what no in-process reader parses
    (ext inline_data, NTFS) is copied out for a tool (work)."""
    try:
        return _inspect(info, disk, work)
    except nbd.NbdError as exc:
        raise GuestInspectionError(str(exc)) from exc


def _inspect(info: ImageInfo, disk: nbd.Export, work: Path) -> GuestFacts:
    facts = GuestFacts()
    budget = Budget.from_env()
    parts: list[Partition | None] = list(info.partitions) if info.table else [None]
    windows = {p.number if p else 0: _window(info, disk, p) for p in parts}
    # every read from the guest (the probes and the ESP too) is counted against the one budget
    reads = {n: budget.counted(w.read, w.label) for n, w in windows.items()}
    found = {n: registry.probe(reads[n](0, min(registry.PROBE_BYTES, w.size))) for n, w in windows.items()}
    roles = {n: f.role if f else None for n, f in found.items()}
    facts.bios = _bios(info.head, info)
    esps: list[tuple[fat.Fat, str]] = []
    for part in parts:
        fs = found[part.number] if part is not None else None
        if part is not None and part.kind == "efi" and fs is not None and fs.role is Role.ESP:
            label = f"partition {part.number} (ESP)"
            # errors name the disk, the partition and its format, then the file ("... (vfat) /EFI/...")
            esp = fat.Fat(reads[part.number], windows[part.number].size, f"{info.path}: {_label(part)} ({fs.name})")
            esps.append((esp, label))
            facts.uefi_loaders += efi.loaders(*esps[-1])
    kernel_signatures: Fact | None = None
    volumes = _volumes(info, parts, windows, reads, found, facts)
    if volumes:
        kernel_signatures = _read_root(info, volumes, work, facts, budget)
    elif (info.table and not any(found.values())) \
            or any(r in (Role.VOLUMES, Role.LINUX) for r in roles.values()):
        facts.unchecked.append("no Linux root filesystem (ext2/3/4, xfs, btrfs, on LVM or not) found")
    for part in parts:
        if roles[part.number if part else 0] is Role.WINDOWS:
            _read_ntfs(info, part, work, facts, budget)
    loaders = [Fact(f.value["architecture"], f.evidence) for f in facts.uefi_loaders
               if f.value["architecture"] != "unknown"]
    inside = facts.architecture_sources  # the kernel's and the ELF binaries', read with the root
    facts.architecture_sources = loaders + inside
    decided = architecture.decide(loaders, inside)
    facts.architecture, facts.architecture_conflict = decided.architecture, decided.conflict
    if facts.architecture is not None:
        facts.secure_boot = _secure_boot(esps, facts.architecture.value, kernel_signatures)
    return facts


def _window(info: ImageInfo, disk: nbd.Export, part: Partition | None) -> nbd.Window:
    if part is None:
        return nbd.Window(disk, 0, disk.size, f"{info.path}: whole disk")
    return nbd.Window(disk, part.start, part.size, f"{info.path}: {_label(part)}")


def _secure_boot(esps: list[tuple[fat.Fat, str]], arch: str, kernel: Fact | None) -> Fact | None:
    """The chain from the ESP's removable-path loader for the guest's architecture."""
    path = secureboot.REMOVABLE.get(arch)
    if path is None:
        return None
    for esp, label in esps:
        loader = efi.read(esp, path, secureboot.LOADER_LIMIT)
        if loader is None:
            continue
        directory, _, _ = path.rpartition("/")
        after = secureboot.SHIM_NEXT.get(arch)
        found = efi.read(esp, f"{directory}/{after}", secureboot.LOADER_LIMIT) if after else None
        next_stage = (f"{label} {directory}/{after}", found) if found is not None else None
        chain = secureboot.judge(f"{label} {path}", loader, next_stage, kernel)
        return Fact(chain.value(), f"{label} {path} and what it chains to (Authenticode signatures)")
    return None


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


def _volumes(info: ImageInfo, parts: list[Partition | None], windows: dict[int, nbd.Window],
             reads: dict[int, Callable[[int, int], bytes]], found: dict[int, Format | None],
             facts: GuestFacts) -> list[Volume]:
    """Every Linux filesystem, on a partition or an LVM volume, in the order a root is looked
    for: typed root partitions, Linux-typed ones, any other, then logical volumes; the largest first."""
    plain: list[Volume] = []
    on_lvm: list[Volume] = []
    for part in parts:
        fs = found[part.number if part else 0]
        if fs is None or (fs.open is None and fs.volumes is None):
            continue
        label = _label(part)
        disk = windows[part.number if part else 0]
        read = reads[part.number if part else 0]
        if fs.volumes is None:
            typed = part is not None and (part.type in partitions.ROOT_TYPES or part.kind == "linux")
            plain.append(Volume(label=label, fs=fs, part=part, read=read, size=disk.size, typed=typed))
            continue
        lvs, skipped = fs.volumes(read, disk.size, f"{info.path}: {label}")  # errors name the disk
        facts.unchecked += [note.removeprefix(f"{info.path}: ") for note in skipped]
        for lv in lvs:
            lv_fs = registry.filesystem(lv.read(0, min(registry.PROBE_BYTES, lv.size)))
            if lv_fs is not None and lv_fs.open is not None:
                on_lvm.append(Volume(label=f"{label} LV {lv.vg}/{lv.name}", fs=lv_fs, part=part,
                                     read=lv.read, size=lv.size, lv=f"{lv.vg}/{lv.name}"))
    rank = {id(v): (0 if v.part is not None and v.part.type in partitions.ROOT_TYPES else 1 if v.typed else 2)
            for v in plain}
    return sorted(plain, key=lambda v: (rank[id(v)], -v.size)) + sorted(on_lvm, key=lambda v: -v.size)


def _read_root(info: ImageInfo, volumes: list[Volume], work: Path, facts: GuestFacts,
               budget: Budget) -> Fact | None:
    """The root is the filesystem holding os-release (not the largest partition: RHEL-family
    images keep /boot apart); a separate /boot is the one holding kernels or a boot loader."""
    opened: list[tuple[Volume, Opened]] = []
    root: tuple[Volume, Opened] | None = None
    for volume in volumes:
        got = _open(info, volume, work, facts, budget)
        if got is None:
            continue
        try:
            holds = _holds_os_release(got)
        except Unsupported as exc:  # met on the way (os-release flagged inline): from a full copy
            got = _debugfs(info, volume, work, exc, budget)
            if got is None:
                facts.unchecked.append(f"{volume.label} is {volume.fs.name} with {exc}: not read")
                continue
            holds = _holds_os_release(got)
        opened.append((volume, got))
        if root is None and holds:
            root = opened[-1]
    if root is None:
        if not opened:
            return None
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
    try:
        found = linux.read_linux(fs.tree, volume.label, boot_tree, boot_label)
    except Unsupported as exc:  # met on the way (an inline_data inode): start over from a full copy
        fallback = _debugfs(info, volume, work, exc, budget)
        if fallback is None:
            raise GuestInspectionError(f"{info.path}: {volume.label}: {exc}") from exc
        found = linux.read_linux(fallback.tree, volume.label, boot_tree, boot_label)
    facts.os_release, facts.os_type = found.os_release, found.os_type or facts.os_type
    facts.init, facts.guest_agent = found.init, found.guest_agent
    facts.architecture_sources += found.architectures
    facts.kernel, facts.drivers, facts.cloud_init = found.kernel, found.drivers, found.cloud_init
    facts.unchecked += found.unchecked
    return found.kernel_signatures


def _holds_os_release(got: Opened) -> bool:
    return any(tree.read(got.tree, path, 1) is not None for path in linux.OS_RELEASE)


def _open(info: ImageInfo, volume: Volume, work: Path, facts: GuestFacts, budget: Budget) -> Opened | None:
    """The volume's tree, or None (noted) for a filesystem its reader does not parse."""
    assert volume.fs.open is not None  # _volumes takes only formats it can open
    try:
        return volume.fs.open(volume.read, volume.size, f"{info.path}: {volume.label}", budget)
    except Unsupported as exc:
        fallback = _debugfs(info, volume, work, exc, budget)
        if fallback is None:
            facts.unchecked.append(f"{volume.label} is {volume.fs.name} with {exc}: not read")
        return fallback


def _debugfs(info: ImageInfo, volume: Volume, work: Path, why: Unsupported, budget: Budget) -> Opened | None:
    """What the in-process reader does not parse (ext: inline_data, meta_bg...), read from a full
    copy of its partition (ext: by debugfs)."""
    if volume.fs.open_copy is None or volume.lv:
        return None
    LOG.info("%s: %s: %s: reading it with debugfs from a full copy", info.path, volume.label, why)
    image = partition.extract(info, volume.part, work / f"root{volume.part.number if volume.part else 0}.raw",
                              budget)
    return volume.fs.open_copy(image, f"{info.path}: {volume.label}")


def _is_boot(guest: tree.Tree) -> bool:
    names = guest.listdir("/") if guest.lstat("/") is not None else []
    return any(n.startswith("vmlinuz-") for n in names) \
        or (any(n in ("grub", "grub2", "loader") for n in names) and "etc" not in names)


def _read_ntfs(info: ImageInfo, part: Partition | None, work: Path, facts: GuestFacts, budget: Budget) -> None:
    label = _label(part)
    if not ntfs.available():
        facts.os_type = facts.os_type or Fact("windows", f"{label} (NTFS signature only)")
        facts.unchecked.append(f"{label} is NTFS but ntfsls (ntfs-3g) is not installed: the Windows "
                               "installation was not checked")
        return
    # ntfs-3g reads a file, not NBD: the whole partition is copied, within the budget's copy_bytes
    image = partition.extract(info, part, work / f"ntfs{part.number if part else 0}.raw", budget)
    volume = ntfs.NtfsTree(image, f"{info.path}: {label}")
    found = windows.read_windows(volume, label, work)
    if found is None or facts.os_type is not None:
        return
    facts.os_type = Fact("windows", found.version.evidence)
    facts.windows = found.version
    facts.windows_drivers = found.drivers
    facts.cloudbase_init = windows.cloudbase_init(volume, label)
