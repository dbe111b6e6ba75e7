"""os-release -> libosinfo short id (nova's os_distro) and vSphere guestId (vmware_ostype)."""

from __future__ import annotations

# os-release ID -> (libosinfo prefix, how many VERSION_ID parts it keeps, vmware guestId or
# a template with {major}, vmware majors that have their own guestId).
TABLE: dict[str, tuple[str, int, str, set[str]]] = {
    "debian": ("debian", 1, "debian{major}_64Guest", {"10", "11", "12"}),
    "ubuntu": ("ubuntu", 2, "ubuntu64Guest", set()),
    "rhel": ("rhel", 2, "rhel{major}_64Guest", {"7", "8", "9"}),
    "centos": ("centos-stream", 1, "centos{major}_64Guest", {"8", "9"}),
    "rocky": ("rocky", 1, "rockylinux_64Guest", set()),
    "almalinux": ("almalinux", 1, "almalinux_64Guest", set()),
    "fedora": ("fedora", 1, "fedora64Guest", set()),
    "opensuse-leap": ("opensuse", 2, "opensuse64Guest", set()),
    "sles": ("sles", 2, "sles{major}_64Guest", {"12", "15"}),
    "alpine": ("alpinelinux", 2, "other5xLinux64Guest", set()),
}
VMWARE_FALLBACK = "otherLinux64Guest"
WINDOWS_VMWARE = "windows2019srv_64Guest"


def short_id(os_id: str, version: str) -> str | None:
    """libosinfo's short id: debian12, ubuntu22.04, rhel9.2, sles15sp5; None if unknown."""
    entry = TABLE.get(os_id)
    if entry is None or not version:
        return None
    prefix, keep, _, _ = entry
    parts = version.replace("-SP", ".").replace("-sp", ".").split(".")[:keep]
    if os_id == "sles" and len(parts) == 2:
        return f"sles{parts[0]}sp{parts[1]}"
    return prefix + ".".join(parts)


def vmware_guest_id(os_id: str, version: str) -> str:
    entry = TABLE.get(os_id)
    if entry is None:
        return VMWARE_FALLBACK
    major = version.split(".")[0].split("-")[0]
    template, majors = entry[2], entry[3]
    if "{major}" in template:
        return template.format(major=major) if major in majors else VMWARE_FALLBACK
    return template
