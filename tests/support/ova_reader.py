"""An OVA read back the way nova's fetch_image_ova reads it, for the OVA tests and the publish ones."""
from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"
RASD = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
VMW = "{http://www.vmware.com/schema/ovf}"


def nova_read(path: Path, dest: Path) -> tuple[ET.Element, str]:
    """nova's fetch_image_ova: stream the tar; the .ovf first, then the first member named like its disk."""
    with path.open("rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        members = iter(tar)
        first = next(members)
        assert first.name.endswith(".ovf")
        root = ET.fromstring(tar.extractfile(first).read())
        file_ref = root.find(f"./{OVF}DiskSection/{OVF}Disk").get(f"{OVF}fileRef")
        href = root.find(f'./{OVF}References/{OVF}File[@{OVF}id="{file_ref}"]').get(f"{OVF}href")
        for member in members:
            if member.name.startswith(href):
                dest.write_bytes(tar.extractfile(member).read())
                return root, href
    raise AssertionError("no member named like the disk")
