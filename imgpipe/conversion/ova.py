"""Write a VMware OVA: the OVF descriptor first, then the streamOptimized vmdk it names, then a manifest.

nova's VMware driver reads an OVA as a stream (fetch_image_ova): the .ovf must be the first
member, its DiskSection/Disk@fileRef -> References/File@href names the vmdk, and that member
is streamed to vCenter's ImportVApp. The descriptor follows the OVF 1.0 envelope VMware's
open-vmdk ova-compose writes: capacity in bytes, a controller matching vmware_adaptertype (so
the guest sees the disk on the bus its drivers expect), the guest OS type and the firmware.
Everything is written in one pass over the vmdk; the manifest's sha256 is computed as it goes.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from html import escape
from pathlib import Path
from typing import BinaryIO

from imgpipe.errors import UnsafeImageError
from imgpipe.source import ova as source_ova

VMX_VERSION = "vmx-14"  # ESXi 6.7 and later; what open-vmdk's templates use
DEFAULT_OSTYPE = "otherGuest64"
CPUS, MEMORY_MIB = 1, 1024  # nova sizes the instance from its flavor; the vApp only carries the disk
STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
NAMESPACES = " ".join(f'{name}="{uri}"' for name, uri in (
    ("xmlns", "http://schemas.dmtf.org/ovf/envelope/1"),
    ("xmlns:cim", "http://schemas.dmtf.org/wbem/wscim/1/common"),
    ("xmlns:ovf", "http://schemas.dmtf.org/ovf/envelope/1"),
    ("xmlns:rasd", "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"),
    ("xmlns:vmw", "http://www.vmware.com/schema/ovf"),
    ("xmlns:vssd", "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"),
    ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
))
DISK_ATTRIBUTES = f'ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ' \
                  f'ovf:format="{STREAM_FORMAT}"'
# vmware_adaptertype -> (rasd ResourceType, ResourceSubType, description); ide has no subtype.
CONTROLLERS = {
    "lsiLogic": (6, "lsilogic", "SCSI Controller"),
    "lsiLogicsas": (6, "lsilogicsas", "SCSI Controller"),
    "busLogic": (6, "buslogic", "SCSI Controller"),
    "paraVirtual": (6, "VirtualSCSI", "SCSI Controller"),
    "ide": (5, None, "IDE Controller"),
}


def member_names(ova: Path) -> tuple[str, str, str]:
    """guest-streamOptimized.ova -> its .ovf, .vmdk and .mf members (the vmdk named as a bare vmware output)."""
    stem = ova.stem
    return f"{stem}.ovf", f"{stem}.vmdk", f"{stem}.mf"


def descriptor(name: str, disk_name: str, disk_size: int, capacity: int, properties: dict[str, str]) -> bytes:
    """The OVF 1.0 envelope for one VM with one streamOptimized disk."""
    ostype = properties.get("vmware_ostype") or DEFAULT_OSTYPE
    kind, subtype, what = CONTROLLERS[properties.get("vmware_adaptertype", "lsiLogic")]
    firmware = "efi" if properties.get("hw_firmware_type") == "uefi" else "bios"
    sub = f"\n        <rasd:ResourceSubType>{subtype}</rasd:ResourceSubType>" if subtype else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope {NAMESPACES}>
  <References>
    <File ovf:href="{escape(disk_name)}" ovf:id="file1" ovf:size="{disk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" {DISK_ATTRIBUTES}/>
  </DiskSection>
  <VirtualSystem ovf:id="{escape(name)}">
    <Info>A virtual machine</Info>
    <Name>{escape(name)}</Name>
    <OperatingSystemSection ovf:id="102" vmw:osType="{escape(ostype)}">
      <Info>The guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{escape(name)}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{VMX_VERSION}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{CPUS} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{CPUS}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{MEMORY_MIB}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{MEMORY_MIB}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>{what}</rasd:Description>
        <rasd:ElementName>{what} 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>{sub}
        <rasd:ResourceType>{kind}</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
""".encode()


def write_ova(vmdk: Path, dest: BinaryIO, ova_name: Path, capacity: int, properties: dict[str, str]) -> None:
    """Stream the OVA into dest: descriptor, vmdk (hashed as it is copied), manifest."""
    ovf_name, disk_name, mf_name = member_names(ova_name)
    size = vmdk.stat().st_size
    ovf = descriptor(ova_name.stem, disk_name, size, capacity, properties)
    with tarfile.open(fileobj=dest, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        _add_bytes(tar, ovf_name, ovf)
        disk_hash = hashlib.sha256()
        with vmdk.open("rb") as f:  # GNU tar: members past 8 GiB, no extra pax members
            tar.addfile(_info(disk_name, size), _Hashing(f, disk_hash))
        manifest = (f"SHA256({ovf_name})= {hashlib.sha256(ovf).hexdigest()}\n"
                    f"SHA256({disk_name})= {disk_hash.hexdigest()}\n").encode()
        _add_bytes(tar, mf_name, manifest)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uname, info.gname = size, 0o644, "root", "root"
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


class _Hashing(io.RawIOBase):
    """A read-only view of a file that hashes what tarfile reads from it."""

    def __init__(self, f: BinaryIO, hasher: hashlib._Hash) -> None:
        self._f, self._hasher = f, hasher

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hasher.update(data)
        return data


def virtual_size(path: Path) -> int:
    """The disk capacity an OVA's descriptor states (for uploading an already built OVA)."""
    capacity = source_ova.read_ova_descriptor(path).capacity
    if capacity is None:
        raise UnsafeImageError(f"{path}: the OVF descriptor states no disk capacity")
    return capacity
