"""A Linux root, read for what derive and refuse need: os-release, init, the guest agent, the
architecture of its ELF binaries, the kernel that boots and its storage drivers, cloud-init."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from imgpipe.guest import architecture, authenticode, cloudinit, pe
from imgpipe.guest.facts import CloudInit, Fact
from imgpipe.guest.fs import tree

INIT_PATHS = ("/sbin/init", "/usr/lib/systemd/systemd", "/lib/systemd/systemd")
AGENT_PATHS = ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga")
ELF_PATHS = ("/sbin/init", "/bin/sh")
KERNEL_LIMIT = 256 << 20
# Storage driver -> its directory under lib/modules/<version>/kernel/.
DRIVERS = {"virtio_blk": "drivers/block", "virtio_scsi": "drivers/scsi", "vmw_pvscsi": "drivers/scsi",
           "hv_storvsc": "drivers/scsi", "sym53c8xx": "drivers/scsi/sym53c8xx_2",
           "mptspi": "drivers/message/fusion", "mptsas": "drivers/message/fusion",
           "ahci": "drivers/ata", "ata_piix": "drivers/ata"}
_MODULE = re.compile(r"^(.+?)\.ko(\.xz|\.zst|\.gz)?$")
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


@dataclass(frozen=True, kw_only=True)
class Linux:
    """What a Linux root holds; the inspection assigns it to GuestFacts once."""

    os_release: Fact | None
    os_type: Fact | None
    init: Fact | None
    guest_agent: Fact | None
    architectures: list[Fact]  # each ELF binary's and the kernel image's, for architecture.decide
    kernel: Fact | None
    kernel_signatures: Fact | None  # the kernel image's Authenticode signers (value: authenticode.Signed)
    drivers: Fact | None
    cloud_init: CloudInit
    unchecked: list[str]


def read_linux(guest: tree.Tree, label: str, boot: tree.Tree | None = None, boot_label: str = "") -> Linux:
    """`boot` is a separate /boot."""
    unchecked: list[str] = []
    os_release = _os_release(guest, label, unchecked)
    init = _first_file(guest, INIT_PATHS, label)
    guest_agent = _first_file(guest, AGENT_PATHS, label)
    arches = _elf_arches(guest, label)
    kernel = _kernel(guest, label, boot, boot_label)
    image = _kernel_image(guest, label, boot, boot_label, kernel.value if kernel else None)
    signatures = None
    if image is not None:
        where, data = image
        if (found := architecture.kernel(data[:architecture.KERNEL_HEAD])) is not None:
            arches.append(Fact(found[0], f"{where} ({found[1]})"))
        signatures = _signatures(data, where)
    drivers = _drivers(guest, label, kernel.value if kernel else None)
    cloud_init = cloudinit.read_cloud_init(guest, label, boot, boot_label)
    if drivers is None:
        unchecked.append(f"{label}: no kernel module tree under /lib/modules; disk driver checks "
                         "not made")
    return Linux(os_release=os_release, os_type=Fact("linux", os_release.evidence) if os_release else None,
                 init=init, guest_agent=guest_agent, architectures=arches, kernel=kernel,
                 kernel_signatures=signatures, drivers=drivers,
                 cloud_init=cloud_init, unchecked=unchecked)


def _os_release(guest: tree.Tree, label: str, unchecked: list[str]) -> Fact | None:
    for path in OS_RELEASE:
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
        return Fact(fields, evidence)
    unchecked.append(f"{label}: no /etc/os-release; os_distro/os_version not derived")
    return None


def _first_file(guest: tree.Tree, paths: tuple[str, ...], label: str) -> Fact | None:
    for path in paths:
        real = tree.resolve(guest, path)
        if real is not None and (node := guest.lstat(real)) is not None and node.kind == "file":
            return Fact(real, f"{label} {path}" + (f" -> {real}" if real != path else ""))
    return None


def _elf_arches(guest: tree.Tree, label: str) -> list[Fact]:
    found = []
    for path in ELF_PATHS:
        got = tree.read(guest, path, 64)
        if got and (machine := architecture.elf(got[1])) is not None:
            found.append(Fact(machine[0], f"{label} {got[0]} (ELF e_machine {machine[1]:#x})"))
    return found


def _kernel_image(guest: tree.Tree, label: str, boot: tree.Tree | None, boot_label: str,
                  version: str | None) -> tuple[str, bytes] | None:
    """The bytes of the kernel that boots (vmlinuz-<version>) and where they were read."""
    if version is None:
        return None
    for where, boot_tree, path in ((boot_label, boot, f"/vmlinuz-{version}"),
                                   (label, guest, f"/boot/vmlinuz-{version}")):
        got = tree.read(boot_tree, path, KERNEL_LIMIT) if boot_tree is not None else None
        if got is not None:
            return f"{where} {path}", got[1]
    return None


def _signatures(data: bytes, where: str) -> Fact | None:
    """The kernel's Authenticode signatures (an EFI-stub kernel is a PE image; a gzip'd arm64
    Image is not, and an unsigned one has none)."""
    if not pe.is_pe(data[:pe.HEAD]):
        return Fact(authenticode.Signed((), ("not a PE image: no Authenticode signature",)), where)
    try:
        return Fact(authenticode.signatures(data), where)
    except pe.PeError as exc:
        return Fact(authenticode.Signed((), (str(exc),)), where)


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
