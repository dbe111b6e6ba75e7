"""What inspection found in a guest, each fact with the evidence it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Fact:
    """A value and where it was read (partition, sector, file), so a user can check it."""

    value: Any
    evidence: str


@dataclass
class CloudInit:
    """cloud-init as guest.cloudinit read it."""

    installed: Fact | None = None  # None: no entry point and no cloudinit package
    version: Fact | None = None
    datasource_list: Fact | None = None  # value None: not set, cloud-init probes its built-in default
    disabled: Fact | None = None
    default_user: Fact | None = None
    notes: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)  # files cloud-init reads that this did not


@dataclass
class GuestFacts:
    uefi_loaders: list[Fact] = field(default_factory=list)
    bios: Fact | None = None
    architecture: Fact | None = None
    architecture_sources: list[Fact] = field(default_factory=list)  # ELF, PE, kernel header: each said
    architecture_conflict: str | None = None  # two sources disagree: both named
    root: Fact | None = None
    os_release: Fact | None = None
    os_type: Fact | None = None
    init: Fact | None = None
    guest_agent: Fact | None = None
    drivers: Fact | None = None  # None: no kernel module tree was found, driver checks cannot be made
    boot: Fact | None = None  # a separate /boot filesystem
    kernel: Fact | None = None  # the kernel version that boots, whose modules `drivers` lists
    cloud_init: CloudInit | None = None
    windows: Fact | None = None  # SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion values
    windows_drivers: Fact | None = None  # SYSTEM services: name -> start, enabled, image path
    cloudbase_init: Fact | None = None
    secure_boot: Fact | None = None  # value: secureboot.Chain.value() of the removable-path loader's chain
    unchecked: list[str] = field(default_factory=list)

    @property
    def uefi(self) -> bool:
        return bool(self.uefi_loaders)

    @property
    def whole_disk_bootable(self) -> bool:
        return self.uefi or self.bios is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"boot_paths": [name for name, ok in
                                              (("uefi", self.uefi), ("bios", self.bios is not None)) if ok]}
