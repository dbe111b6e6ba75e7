"""The QEMU machine that imitates what a profile's Glance properties ask a hypervisor for.

Firmware and disk controller come from the properties the image is published with, so a boot
check boots the image the way nova (or vCenter, Hyper-V) will. Where the firmware has no driver
for the real controller (Debian's OVMF has none for LSI SCSI), the closest one it can boot from
stands in: the guest kernel still has to find its root disk on it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from imgpipe.boot.firmware import Firmware, Platform, architecture_of, platform_for
from imgpipe.boot.tpm import Tpm, tpm_for
from imgpipe.guest.policy.controllers import AHCI, CONTROLLERS, IDE, LSI, PVSCSI, VIRTIO_BLK, VIRTIO_SCSI, Device

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
MEMORY_MIB = 1024
# /dev/kvm alone proves nothing here: kvm_pvm (nested) provides it but cannot run a stock guest.
KVM_MODULES = (Path("/sys/module/kvm_intel"), Path("/sys/module/kvm_amd"))
# nova.version's vendor and product strings, and a release's version (2025.1)
NOVA_VENDOR, NOVA_PRODUCT, NOVA_VERSION = "OpenStack Foundation", "OpenStack Nova", "31.0.0"


def firmware_for(properties: Mapping[str, str]) -> Firmware:
    """nova boots BIOS unless hw_firmware_type=uefi; Hyper-V Gen2 is UEFI only, Gen1 BIOS only;
    Arm guests only UEFI."""
    if architecture_of(properties) == "aarch64":
        return Firmware.uefi
    machine = properties.get("hw_machine_type", "").lower()
    if machine == "hyperv-gen2":
        return Firmware.uefi
    if machine == "hyperv-gen1":
        return Firmware.bios
    return Firmware.uefi if properties.get("hw_firmware_type", "").lower() == "uefi" else Firmware.bios


def controller_for(properties: Mapping[str, str], firmware: Firmware) -> tuple[Device, str]:
    """The controller's stand-in and why it was chosen (shown to the user)."""
    if bus := properties.get("hw_disk_bus"):
        if (known := CONTROLLERS.get(("hw_disk_bus", bus))) is not None:
            return known.qemu, f"hw_disk_bus={bus}"
        return VIRTIO_BLK, f"hw_disk_bus={bus} has no qemu stand-in; virtio-blk"
    adapter = properties.get("vmware_adaptertype", "")
    if adapter:
        why = f"vmware_adaptertype={adapter}"
        known = CONTROLLERS.get(("vmware_adaptertype", adapter.lower()))
        if known is None:
            return LSI, why + " is unknown; LSI"
        if firmware is Firmware.uefi and known.uefi_qemu is not None:
            return known.uefi_qemu, why + " under UEFI: AHCI (Debian's OVMF has no driver for it)"
        return known.qemu, why
    if properties.get("hypervisor_type", "").lower() == "hyperv":
        hyperv = CONTROLLERS["hypervisor_type", "hyperv"]
        if firmware is Firmware.uefi and hyperv.uefi_qemu is not None:
            return hyperv.uefi_qemu, "Hyper-V Gen2 (SCSI, UEFI): AHCI"
        return hyperv.qemu, "Hyper-V Gen1: IDE"
    return VIRTIO_BLK, "default: virtio-blk"


@dataclass(frozen=True)
class ConfigDriveSlot:
    """Where nova puts a server's config drive on this target: controllers to add, the -device
    for drive cd0, and whether it is a cdrom (read-only media) or a disk (kept unwritten by a snapshot)."""

    bus: tuple[str, ...]
    device: str
    cdrom: bool
    why: str

    def argv(self, iso: Path) -> list[str]:
        media = "media=cdrom,readonly=on" if self.cdrom else "snapshot=on"
        args = [a for dev in self.bus for a in ("-device", dev)]
        return ["-drive", f"file={iso},format=raw,if=none,id=cd0,{media}", *args, "-device", self.device]


_CDROM_ON = {
    "ide": ((), "ide-cd,drive=cd0,bus=ide.0,unit={unit}"),
    "sata": (("ahci,id=ahci1",), "ide-cd,drive=cd0,bus=ahci1.0"),
    "scsi": (("virtio-scsi-pci,id=scsi1",), "scsi-cd,drive=cd0,bus=scsi1.0"),
}
# a disk beside the root disk, on the root's controller (Hyper-V Gen1: IDE controller 1, slot 0)
_SECOND_DISK = {
    VIRTIO_BLK.name: "virtio-blk-pci,drive=cd0",
    VIRTIO_SCSI.name: "scsi-hd,drive=cd0,bus=scsi0.0",
    IDE.name: "ide-hd,drive=cd0,bus=ide.1,unit=0",
    AHCI.name: "ide-hd,drive=cd0,bus=ahci0.1",
    LSI.name: "scsi-hd,drive=cd0,bus=scsi0.0",
    PVSCSI.name: "scsi-hd,drive=cd0,bus=scsi0.0",
}


def config_drive_slot(properties: Mapping[str, str], controller: Device) -> ConfigDriveSlot:
    """Follows each nova driver (checked in nova's source):

    libvirt kvm/qemu: config_drive_format=iso9660 (the default) makes it a cdrom, on hw_cdrom_bus
    if the image sets one, else sata for a q35 machine and ide for pc, nova's x86 default
    (blockinfo.get_disk_bus_for_device_type); it takes the next free IDE slot after the root disk.
    VMware: always a CD-ROM on an IDE controller (vmops._attach_cdrom_to_vm).
    Hyper-V (driver removed in nova 2024.1): config_drive_cdrom defaults to False, so the ISO is
    converted to a VHD and attached as a disk: Gen1 on IDE controller 1, Gen2 on its SCSI
    controller, for which AHCI stands in here as for the root disk.
    Ironic: the agent writes the drive into a partition of the node's disk; a second disk on the
    root's controller stands in, since the guest finds the drive by its label either way.
    """
    hypervisor = properties.get("hypervisor_type", "").lower()
    root_on_ide0 = controller is IDE
    if architecture_of(properties) == "aarch64" and hypervisor in ("", "kvm", "qemu") \
            and "img_type" not in properties:
        bus = properties.get("hw_cdrom_bus", "").lower() or "scsi"  # nova's aarch64 default (blockinfo)
        extra, device = _CDROM_ON.get(bus, _CDROM_ON["scsi"])
        return ConfigDriveSlot(extra, device.format(unit=0), True, f"libvirt aarch64: a cdrom on {bus}")
    if hypervisor == "vmware":
        return ConfigDriveSlot((), _CDROM_ON["ide"][1].format(unit=int(root_on_ide0)), True,
                               "VMware: a CD-ROM on IDE")
    if hypervisor == "hyperv":
        return ConfigDriveSlot((), _SECOND_DISK[controller.name], False,
                               f"Hyper-V: a disk (config_drive_cdrom=False) on {controller.name}")
    if not hypervisor and "img_type" in properties:
        return ConfigDriveSlot((), _SECOND_DISK[controller.name], False,
                               f"Ironic: a disk holding the drive, on {controller.name}")
    machine = properties.get("hw_machine_type", "").lower()
    bus = properties.get("hw_cdrom_bus", "").lower() or ("sata" if "q35" in machine else "ide")
    why = f"libvirt: a cdrom on {bus}"
    if bus not in _CDROM_ON:
        bus, why = "ide", f"libvirt: hw_cdrom_bus={bus} has no qemu stand-in; a cdrom on ide"
    extra, device = _CDROM_ON[bus]
    return ConfigDriveSlot(extra, device.format(unit=int(root_on_ide0)), True, why)


@dataclass(frozen=True)
class Nic:
    """The guest's network device: a qemu -device model standing in for the target's NIC."""

    model: str
    why: str


# nova's hw_vif_model values (network/model.py VIF_MODEL_*, and the VMware names its VMware driver
# takes as they are: vm_util.convert_vif_model) that qemu has a device for, lower-cased
VIF_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139",
              "ne2k_pci": "ne2k_pci", "pcnet": "pcnet", "vmxnet3": "vmxnet3", "virtuale1000": "e1000",
              "virtuale1000e": "e1000e", "virtualpcnet32": "pcnet", "virtualvmxnet3": "vmxnet3"}


def nic_for(properties: Mapping[str, str]) -> Nic:
    """hw_vif_model wins, as in nova's libvirt (get_vif_model) and VMware drivers; otherwise
    libvirt kvm/qemu give virtio (use_virtio_for_bridges), VMware e1000 (its DEFAULT_VIF_MODEL);
    Hyper-V's synthetic NIC and a bare-metal node's NIC have no qemu model: e1000 stands in."""
    if model := properties.get("hw_vif_model", "").lower():
        if model in VIF_MODELS:
            return Nic(VIF_MODELS[model], f"hw_vif_model={model}")
        return Nic("virtio-net-pci", f"hw_vif_model={model} has no qemu stand-in; virtio-net")
    hypervisor = properties.get("hypervisor_type", "").lower()
    if hypervisor == "vmware":
        return Nic("e1000", "VMware: nova's default vif model e1000")
    if hypervisor == "hyperv":
        return Nic("e1000", "Hyper-V's synthetic NIC has no qemu stand-in; e1000")
    if not hypervisor and "img_type" in properties:
        return Nic("e1000", "Ironic: the node's NIC; e1000 stands in")
    return Nic("virtio-net-pci", "libvirt: virtio")


def libvirt_guest(properties: Mapping[str, str]) -> bool:
    """Whether nova's libvirt driver runs this target: it alone gives the guest nova's SMBIOS."""
    hypervisor = properties.get("hypervisor_type", "").lower()
    return hypervisor in ("kvm", "qemu") or (not hypervisor and "img_type" not in properties)


@dataclass(frozen=True)
class MetadataLink:
    """A guest NIC on an isolated QEMU user network (restrict=on: QEMU's DHCP, and only the
    `guestfwd` forward, nothing leaves the machine) carrying nova's metadata service, and the
    instance uuid the SMBIOS and the metadata agree on."""

    network: str  # the guest network, containing the metadata address
    guestfwd: str  # the -netdev user guestfwd=... option
    uuid: str

    def argv(self, nic: Nic, smbios: bool) -> list[str]:
        args = ["-netdev", f"user,id=n0,net={self.network},restrict=on,{self.guestfwd}",
                "-device", f"{nic.model},netdev=n0"]
        if smbios:  # what nova's libvirt driver sets (_get_guest_config_sysinfo, sysinfo_serial=unique)
            args += ["-smbios", f"type=1,manufacturer={NOVA_VENDOR},product={NOVA_PRODUCT},version={NOVA_VERSION},"
                                f"serial={self.uuid},uuid={self.uuid},family=Virtual Machine"]
        return args


def kvm_works() -> bool:
    return Path("/dev/kvm").exists() and any(m.exists() for m in KVM_MODULES)


@dataclass(frozen=True)
class Machine:
    firmware: Firmware
    controller: Device
    why: str
    kvm: bool
    config_drive: ConfigDriveSlot
    nic: Nic
    smbios: bool  # nova's SMBIOS (product "OpenStack Nova"): only its libvirt driver sets it
    platform: Platform
    tpm: Tpm | None = None

    def argv(self, image: Path, fmt: str, serial_log: Path, vars_copy: Path | None,
             firmware_log: Path | None = None, config_drive: Path | None = None,
             metadata: MetadataLink | None = None, tpm_socket: Path | None = None) -> list[str]:
        """Never writes the image (snapshot=on); no display, stop instead of reboot.

        SeaBIOS writes its messages ("Booting from Hard Disk...") to the debug port, not ttyS0:
        firmware_log keeps them for a guest that never reaches its kernel. `config_drive` (an ISO)
        is attached where nova attaches it on this target. No network unless `metadata`: cloud-init
        then has only the config drive, and nothing waits for a DHCP lease.
        """
        accel = ["-enable-kvm", "-cpu", "host"] if self.kvm else ["-accel", "tcg", "-cpu", self.platform.tcg_cpu]
        firmware: list[str] = []
        if self.firmware is Firmware.uefi:
            assert vars_copy is not None
            firmware = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={self.platform.code}",
                        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        if self.platform.arch == "aarch64":
            firmware_log = None  # the virt machine has no ISA debug port
        return [self.platform.qemu, *self.platform.argv(), *accel,
                "-m", str(MEMORY_MIB), "-display", "none", "-no-reboot",
                *(metadata.argv(self.nic, self.smbios) if metadata else ["-nic", "none"]),
                "-serial", f"file:{serial_log}", "-monitor", "none", *firmware,
                "-drive", f"file={image},format={fmt},if=none,id=d0,snapshot=on",
                *self.controller.argv(),
                *(self.config_drive.argv(config_drive) if config_drive else []),
                *(self.tpm.argv(tpm_socket, self.platform.arch) if self.tpm and tpm_socket else []),
                *(["-debugcon", f"file:{firmware_log}", "-global", "isa-debugcon.iobase=0x402"]
                  if firmware_log else [])]


def machine_for(properties: Mapping[str, str], firmware: Firmware = Firmware.auto) -> Machine:
    chosen = firmware_for(properties) if firmware is Firmware.auto else firmware
    controller, why = controller_for(properties, chosen)
    platform = platform_for(properties, chosen is Firmware.uefi)
    kvm = kvm_works() and platform.arch in ("x86_64", "i686")
    seen = {**properties, "hw_machine_type": properties.get("hw_machine_type") or platform.machine.split(",")[0]}
    return Machine(chosen, controller, why, kvm, config_drive_slot(seen, controller), nic_for(properties),
                   libvirt_guest(properties), platform, tpm_for(properties))


def private_vars(directory: Path, template: Path = OVMF_VARS) -> Path:
    """The firmware writes its variable store: each boot gets its own copy of the template."""
    copy = directory / template.name
    shutil.copyfile(template, copy)
    return copy
