"""The QEMU machine that imitates what a profile's Glance properties ask a hypervisor for.

Firmware and disk controller come from the properties the image is published with, so a boot
check boots the image the way nova (or vCenter, Hyper-V) will. Where the firmware has no driver
for the real controller (Debian's OVMF has none for LSI SCSI), the closest one it can boot from
stands in: the guest kernel still has to find its root disk on it.
"""

from __future__ import annotations

import enum
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
MEMORY_MIB = 1024
# /dev/kvm alone proves nothing here: kvm_pvm (nested) provides it but cannot run a stock guest.
KVM_MODULES = (Path("/sys/module/kvm_intel"), Path("/sys/module/kvm_amd"))
LSI_ADAPTERS = {"lsilogic", "lsilogicsas", "buslogic"}


class Firmware(str, enum.Enum):
    auto = "auto"
    bios = "bios"
    uefi = "uefi"


@dataclass(frozen=True)
class Controller:
    """A disk controller as qemu -device arguments; `disk` attaches drive d0 to it."""

    name: str
    bus: tuple[str, ...]
    disk: str

    def argv(self) -> list[str]:
        args = [a for dev in self.bus for a in ("-device", dev)]
        return [*args, "-device", self.disk]


VIRTIO_BLK = Controller("virtio-blk", (), "virtio-blk-pci,drive=d0")
VIRTIO_SCSI = Controller("virtio-scsi", ("virtio-scsi-pci,id=scsi0",), "scsi-hd,drive=d0,bus=scsi0.0")
IDE = Controller("ide", (), "ide-hd,drive=d0,bus=ide.0")
AHCI = Controller("ahci", ("ahci,id=ahci0",), "ide-hd,drive=d0,bus=ahci0.0")
LSI = Controller("lsi53c895a", ("lsi53c895a,id=scsi0",), "scsi-hd,drive=d0,bus=scsi0.0")
PVSCSI = Controller("pvscsi", ("pvscsi,id=scsi0",), "scsi-hd,drive=d0,bus=scsi0.0")
DISK_BUS = {"virtio": VIRTIO_BLK, "scsi": VIRTIO_SCSI, "ide": IDE, "sata": AHCI}


def firmware_for(properties: Mapping[str, str]) -> Firmware:
    """nova boots BIOS unless hw_firmware_type=uefi; Hyper-V Gen2 is UEFI only, Gen1 BIOS only."""
    machine = properties.get("hw_machine_type", "").lower()
    if machine == "hyperv-gen2":
        return Firmware.uefi
    if machine == "hyperv-gen1":
        return Firmware.bios
    return Firmware.uefi if properties.get("hw_firmware_type", "").lower() == "uefi" else Firmware.bios


def controller_for(properties: Mapping[str, str], firmware: Firmware) -> tuple[Controller, str]:
    """The controller and why it was chosen (shown to the user)."""
    if bus := properties.get("hw_disk_bus"):
        if bus in DISK_BUS:
            return DISK_BUS[bus], f"hw_disk_bus={bus}"
        return VIRTIO_BLK, f"hw_disk_bus={bus} has no qemu stand-in; virtio-blk"
    adapter = properties.get("vmware_adaptertype", "")
    if adapter:
        why = f"vmware_adaptertype={adapter}"
        if adapter.lower() == "ide":
            return IDE, why
        if firmware is Firmware.uefi and adapter.lower() in LSI_ADAPTERS | {"paravirtual"}:
            return AHCI, why + " under UEFI: AHCI (Debian's OVMF has no driver for it)"
        if adapter.lower() in LSI_ADAPTERS:
            return LSI, why
        if adapter.lower() == "paravirtual":
            return PVSCSI, why
        return LSI, why + " is unknown; LSI"
    if properties.get("hypervisor_type", "").lower() == "hyperv":
        return (AHCI, "Hyper-V Gen2 (SCSI, UEFI): AHCI") if firmware is Firmware.uefi else (IDE, "Hyper-V Gen1: IDE")
    return VIRTIO_BLK, "default: virtio-blk"


def kvm_works() -> bool:
    return Path("/dev/kvm").exists() and any(m.exists() for m in KVM_MODULES)


@dataclass(frozen=True)
class Machine:
    firmware: Firmware
    controller: Controller
    why: str
    kvm: bool

    def argv(self, image: Path, fmt: str, serial_log: Path, vars_copy: Path | None,
             firmware_log: Path | None = None) -> list[str]:
        """Never writes the image (snapshot=on); no display, no network, stop instead of reboot.

        SeaBIOS writes its messages ("Booting from Hard Disk...") to the debug port, not ttyS0:
        firmware_log keeps them for a guest that never reaches its kernel.
        """
        accel = ["-enable-kvm", "-cpu", "host"] if self.kvm else ["-accel", "tcg", "-cpu", "max"]
        firmware: list[str] = []
        if self.firmware is Firmware.uefi:
            assert vars_copy is not None
            firmware = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        return [QEMU, "-machine", "pc", *accel,
                "-m", str(MEMORY_MIB), "-display", "none", "-no-reboot", "-nic", "none",
                "-serial", f"file:{serial_log}", "-monitor", "none", *firmware,
                "-drive", f"file={image},format={fmt},if=none,id=d0,snapshot=on",
                *self.controller.argv(),
                *(["-debugcon", f"file:{firmware_log}", "-global", "isa-debugcon.iobase=0x402"]
                  if firmware_log else [])]


def machine_for(properties: Mapping[str, str], firmware: Firmware = Firmware.auto) -> Machine:
    chosen = firmware_for(properties) if firmware is Firmware.auto else firmware
    controller, why = controller_for(properties, chosen)
    return Machine(chosen, controller, why, kvm_works())


def private_vars(directory: Path) -> Path:
    """OVMF writes its variable store: each boot gets its own copy of the template."""
    copy = directory / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, copy)
    return copy
