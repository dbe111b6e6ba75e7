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
    release = facts.os_release.value if facts.os_release else {}
    os_id, version = release.get("ID", ""), release.get("VERSION_ID", "")
    if hypervisor == "vmware":
        guest_id = (osinfo.WINDOWS_VMWARE if facts.os_type and facts.os_type.value == "windows"
                    else osinfo.vmware_guest_id(os_id, version) if facts.os_release else None)
        if guest_id:
            evidence = facts.os_release.evidence if facts.os_release else facts.os_type.evidence  # type: ignore[union-attr]
            derived["vmware_ostype"] = Fact(guest_id, f"{evidence} (ID={os_id or 'windows'} "
                                            f"VERSION_ID={version or '?'})")
    else:
        short = osinfo.short_id(os_id, version)
        if short and facts.os_release:
            derived["os_distro"] = Fact(short, f"{facts.os_release.evidence} (ID={os_id})")
            derived["os_version"] = Fact(version, f"{facts.os_release.evidence} (VERSION_ID)")
        elif facts.os_type and facts.os_type.value == "windows":
            derived["os_distro"] = Fact("windows", facts.os_type.evidence)
    if hypervisor in QEMU_HYPERVISORS and facts.guest_agent:
        derived["hw_qemu_guest_agent"] = Fact("yes", facts.guest_agent.evidence)
    return derived


def to_dict(derived: dict[str, Fact]) -> dict[str, dict[str, str]]:
    return {k: {"value": f.value, "evidence": f.evidence} for k, f in derived.items()}
