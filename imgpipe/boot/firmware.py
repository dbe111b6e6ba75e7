"""The platform a boot check starts: which QEMU, machine, CPU and firmware imitate what the
image's properties ask nova for (architecture, hw_machine_type, hw_firmware_type, os_secure_boot),
and what the serial console must show besides the boot marker to prove it was imitated.

- aarch64: qemu-system-aarch64 -M virt with AAVMF (nova's libvirt driver boots Arm guests only
  with UEFI on virt). Both pflash banks are exactly 64 MiB, as Debian ships them. Under TCG,
  cortex-a57: `max` emulates pointer authentication with QARMA, about 3x slower.
- os_secure_boot=required: q35 with SMM, OVMF's secboot code and a copy of its .ms variable
  store (Microsoft's UEFI CA 2011 and Windows PCA 2011 enrolled, Secure Boot on); the kernel
  must say "Secure boot enabled", and a loader the firmware (or shim) refuses ends the check at once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

OVMF = Path("/usr/share/OVMF")
AAVMF = Path("/usr/share/AAVMF")
AAVMF_BANK = 64 << 20
# What the firmware or shim prints when Secure Boot refuses a loader: the check ends on it.
# Anchored at line starts: unanchored, the leading [^\n]* made a flooded console's long line quadratic.
REFUSED = re.compile(r"(?m)^[^\n]*(?:Access Denied|Verification failed|bad shim signature)[^\n]*")
SECURE_BOOT_ON = re.compile(r"Secure boot enabled")


class Firmware(str, enum.Enum):
    """What boot-check --firmware takes (auto: from the properties, as nova decides)."""

    auto = "auto"
    bios = "bios"
    uefi = "uefi"


@dataclass(frozen=True)
class Platform:
    arch: str
    qemu: str
    machine: str  # -machine
    tcg_cpu: str
    code: Path  # pflash unit 0 (UEFI)
    vars_template: Path  # pflash unit 1 is a private copy of this
    secure_boot: bool
    why: str
    serial_console: str  # the guest's kernel console: ttyS0 on x86, ttyAMA0 (PL011) on virt

    def argv(self) -> list[str]:
        """-machine and what Secure Boot adds to it (the pflash drives are the caller's)."""
        smm = self.secure_boot and self.arch != "aarch64"  # x86 firmware guards its variables in SMM
        extra = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if smm else []
        return ["-machine", self.machine, *extra]

    def proofs(self) -> list[tuple[str, re.Pattern[str]]]:
        """Lines the serial console must show besides the marker, each with what it proves."""
        return [("Secure Boot enforced", SECURE_BOOT_ON)] if self.secure_boot else []


def architecture_of(properties: Mapping[str, str]) -> str:
    return (properties.get("architecture") or properties.get("hw_architecture") or "x86_64").lower()


def platform_for(properties: Mapping[str, str], uefi: bool) -> Platform:
    arch = architecture_of(properties)
    secure = properties.get("os_secure_boot", "").lower() == "required"
    if arch == "aarch64":
        vars_template = AAVMF / ("AAVMF_VARS.ms.fd" if secure else "AAVMF_VARS.fd")
        return Platform("aarch64", "qemu-system-aarch64", "virt", "cortex-a57", AAVMF / "AAVMF_CODE.fd",
                        vars_template, secure, "aarch64: virt, AAVMF" + (" (Microsoft keys)" if secure else ""),
                        "ttyAMA0")
    q35 = properties.get("hw_machine_type", "").lower().startswith(("q35", "pc-q35")) or secure
    if secure:
        return Platform(arch, "qemu-system-x86_64", "q35,smm=on", "max", OVMF / "OVMF_CODE_4M.secboot.fd",
                        OVMF / "OVMF_VARS_4M.ms.fd", True,
                        "os_secure_boot=required: q35+SMM, OVMF secboot with Microsoft keys", "ttyS0")
    if q35:
        return Platform(arch, "qemu-system-x86_64", "q35", "max", OVMF / "OVMF_CODE_4M.fd", OVMF / "OVMF_VARS_4M.fd",
                        False, "hw_machine_type=q35", "ttyS0")
    return Platform(arch, "qemu-system-x86_64", "pc", "max", OVMF / "OVMF_CODE.fd", OVMF / "OVMF_VARS.fd", False,
                    "pc", "ttyS0")
