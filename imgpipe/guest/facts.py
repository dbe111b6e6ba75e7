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
class GuestFacts:
    uefi_loaders: list[Fact] = field(default_factory=list)
    bios: Fact | None = None
    architecture: Fact | None = None
    root: Fact | None = None
    os_release: Fact | None = None
    os_type: Fact | None = None
    init: Fact | None = None
    guest_agent: Fact | None = None
    drivers: Fact | None = None  # None: no kernel module tree was found, driver checks cannot be made
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
