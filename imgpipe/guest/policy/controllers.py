"""Disk controllers a property asks a hypervisor for: one table, read by derive and refuse (which
guest driver each needs) and by boot-check (which QEMU device stands in for it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """A disk controller as qemu -device arguments; `disk` attaches drive d0 to it."""

    name: str
    bus: tuple[str, ...]
    disk: str

    def argv(self) -> list[str]:
        args = [a for dev in self.bus for a in ("-device", dev)]
        return [*args, "-device", self.disk]


VIRTIO_BLK = Device("virtio-blk", (), "virtio-blk-pci,drive=d0")
VIRTIO_SCSI = Device("virtio-scsi", ("virtio-scsi-pci,id=scsi0",), "scsi-hd,drive=d0,bus=scsi0.0")
IDE = Device("ide", (), "ide-hd,drive=d0,bus=ide.0")
AHCI = Device("ahci", ("ahci,id=ahci0",), "ide-hd,drive=d0,bus=ahci0.0")
LSI = Device("lsi53c895a", ("lsi53c895a,id=scsi0",), "scsi-hd,drive=d0,bus=scsi0.0")
PVSCSI = Device("pvscsi", ("pvscsi,id=scsi0",), "scsi-hd,drive=d0,bus=scsi0.0")


@dataclass(frozen=True, kw_only=True)
class Controller:
    value: str  # the property's value, as nova documents it
    qemu: Device  # what stands in for it in a boot-check
    uefi_qemu: Device | None = None  # the stand-in under UEFI, where Debian's OVMF has no driver for `qemu`
    linux: str = ""  # the guest kernel module that drives it
    windows: str = ""  # the Windows service that drives it ("": Windows has it inbox)
    required: bool = False  # refuse a guest without the driver (else derive only prefers one that has it)


# (property, lower-case value) -> the controller. hw_disk_bus values are matched as given.
CONTROLLERS: dict[tuple[str, str], Controller] = {
    ("vmware_adaptertype", "paravirtual"): Controller(value="paraVirtual", qemu=PVSCSI, uefi_qemu=AHCI,
                                                      linux="vmw_pvscsi", windows="pvscsi", required=True),
    ("vmware_adaptertype", "lsilogic"): Controller(value="lsiLogic", qemu=LSI, uefi_qemu=AHCI,
                                                   linux="mptspi", windows="LSI_SCSI", required=True),
    ("vmware_adaptertype", "lsilogicsas"): Controller(value="lsiLogicsas", qemu=LSI, uefi_qemu=AHCI,
                                                      linux="mptsas", windows="LSI_SAS", required=True),
    ("vmware_adaptertype", "buslogic"): Controller(value="busLogic", qemu=LSI, uefi_qemu=AHCI),
    ("vmware_adaptertype", "ide"): Controller(value="ide", qemu=IDE),
    ("hw_disk_bus", "virtio"): Controller(value="virtio", qemu=VIRTIO_BLK, linux="virtio_blk", windows="viostor",
                                          required=True),
    ("hw_disk_bus", "scsi"): Controller(value="scsi", qemu=VIRTIO_SCSI),
    ("hw_disk_bus", "ide"): Controller(value="ide", qemu=IDE),
    ("hw_disk_bus", "sata"): Controller(value="sata", qemu=AHCI, linux="ahci"),
    ("hw_scsi_model", "virtio-scsi"): Controller(value="virtio-scsi", qemu=VIRTIO_SCSI, linux="virtio_scsi",
                                                 windows="vioscsi", required=True),
    # Hyper-V: Gen1 boots from IDE, Gen2 from SCSI (UEFI only), for which AHCI stands in
    ("hypervisor_type", "hyperv"): Controller(value="hyperv", qemu=IDE, uefi_qemu=AHCI, linux="hv_storvsc",
                                              windows="storvsc", required=True),
}
