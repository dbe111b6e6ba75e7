"""Glance properties a profile's target needs to boot this guest, each with its evidence."""

from __future__ import annotations

from imgpipe.guest import osinfo
from imgpipe.guest.facts import Fact, GuestFacts
from imgpipe.profiles import Profile

QEMU_HYPERVISORS = ("kvm", "qemu")


def properties(facts: GuestFacts, profile: Profile) -> dict[str, Fact]:
    """Derived properties; the caller lets profile and user properties override them."""
    if profile.package == "docker-archive":
        return {}
    hypervisor = profile.properties.get("hypervisor_type", "").lower()
    derived: dict[str, Fact] = {}
    if profile.extract != "root-partition" and facts.uefi and facts.bios is None:
        derived["hw_firmware_type"] = Fact("uefi", "boots only with UEFI: "
                                           + ", ".join(f.evidence for f in facts.uefi_loaders))
    if facts.architecture:
        derived["architecture"] = facts.architecture
    if facts.os_type:
        derived["os_type"] = facts.os_type
    windows = facts.os_type if facts.os_type and facts.os_type.value == "windows" else None
    if hypervisor == "vmware":
        derived.update(_vmware(facts, windows))
    elif facts.os_release:
        derived.update(_os_distro(facts.os_release))
    elif windows:
        derived["os_distro"] = Fact("windows", windows.evidence)
    if hypervisor in QEMU_HYPERVISORS and facts.guest_agent:
        derived["hw_qemu_guest_agent"] = Fact("yes", facts.guest_agent.evidence)
    return derived


def _os_distro(os_release: Fact) -> dict[str, Fact]:
    """os_distro/os_version in Glance's vocabulary; never on vmware, where nova would send os_distro
    to vCenter as the guestId instead of vmware_ostype, and vCenter rejects names like "ubuntu"."""
    found = {"os_distro": osinfo.os_distro(os_release.value), "os_version": osinfo.os_version(os_release.value)}
    return {key: Fact(got.value, f"{os_release.evidence} ({got.why})") for key, got in found.items() if got}


def _vmware(facts: GuestFacts, windows: Fact | None) -> dict[str, Fact]:
    if windows:
        return {"vmware_ostype": Fact(osinfo.WINDOWS_VMWARE, f"{windows.evidence} (Windows, version not read)")}
    if facts.os_release:
        got = osinfo.vmware_guest_id(facts.os_release.value)
        return {"vmware_ostype": Fact(got.value, f"{facts.os_release.evidence} ({got.why})")}
    return {}


def to_dict(derived: dict[str, Fact]) -> dict[str, dict[str, str]]:
    return {k: {"value": f.value, "evidence": f.evidence} for k, f in derived.items()}
