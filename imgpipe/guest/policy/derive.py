"""Glance properties a profile's target needs to boot this guest, each with its evidence."""

from __future__ import annotations

from imgpipe.guest.facts import Fact, GuestFacts
from imgpipe.guest.policy import nova, osinfo
from imgpipe.guest.policy.controllers import CONTROLLERS, Controller
from imgpipe.guest.policy.metadata import METADATA_PATHS, Outcome, cloudbase_verdict, verdict
from imgpipe.profiles import Profile

QEMU_HYPERVISORS = ("kvm", "qemu")
_VIRTIO_OR_SATA = ("hw_disk_bus", (CONTROLLERS["hw_disk_bus", "virtio"], CONTROLLERS["hw_disk_bus", "sata"]))
# hypervisor_type -> (property, its controllers; the first is what the target uses when the
# property is unset). Where the guest lacks the driver of the profile's controller but has one
# of another, the one it can boot from is derived.
CHOICES: dict[str, tuple[str, tuple[Controller, ...]]] = {
    "vmware": ("vmware_adaptertype", tuple(CONTROLLERS["vmware_adaptertype", v]
                                           for v in ("lsilogic", "paravirtual", "lsilogicsas"))),
    "kvm": _VIRTIO_OR_SATA,
    "qemu": _VIRTIO_OR_SATA,
}
# A Windows guest without netkvm has no driver for nova's default virtio NIC on kvm/qemu;
# e1000 it drives inbox.
WINDOWS_NIC = ("hw_vif_model", "netkvm", "e1000")
# Derived values that replace the profile's own (a controller the guest can boot from beats the
# profile's default); what the user gives still wins over them (pipeline.prepared).
OVER_PROFILE = frozenset({"vmware_adaptertype", "hw_disk_bus", "hw_vif_model"})


def hypervisor_of(profile: Profile) -> str:
    """nova's hypervisor for the profile: its hypervisor_type, or ironic for a whole-disk image."""
    hypervisor = profile.properties.get("hypervisor_type", "").lower()
    if not hypervisor and profile.properties.get("img_type") in ("whole-disk", "partition"):
        return "ironic"
    return hypervisor


def drivers_of(facts: GuestFacts) -> tuple[set[str], str] | None:
    """The storage/network drivers the guest has (Windows: enabled services), and where that was
    read; None when it could not be read."""
    if facts.windows_drivers is not None:
        return ({name for name, d in facts.windows_drivers.value.items() if d.get("enabled")},
                facts.windows_drivers.evidence)
    if facts.drivers is not None:
        return set(facts.drivers.value), facts.drivers.evidence
    return None


def properties(facts: GuestFacts, profile: Profile) -> dict[str, Fact]:
    """Derived properties; the caller lets profile and user properties override them."""
    if not profile.converts:
        return {}
    hypervisor = hypervisor_of(profile)
    derived: dict[str, Fact] = {}
    if profile.extract != "root-partition" and facts.uefi and facts.bios is None:
        derived["hw_firmware_type"] = Fact("uefi", "boots only with UEFI: "
                                           + ", ".join(f.evidence for f in facts.uefi_loaders))
    arch = facts.architecture.value if facts.architecture else None
    if facts.architecture and arch in nova.ARCHITECTURES:
        derived["architecture"] = facts.architecture
    if facts.architecture and arch == "aarch64" and hypervisor in QEMU_HYPERVISORS:
        derived.update(_aarch64(facts.architecture))
    if facts.os_type:
        derived["os_type"] = facts.os_type
    windows = facts.os_type if facts.os_type and facts.os_type.value == "windows" else None
    if hypervisor == "vmware" and (arch is None or arch in nova.X86):
        derived.update(_vmware(facts, windows))
    elif facts.os_release:
        derived.update(_os_distro(facts.os_release))
    elif windows:
        derived.update(_windows_distro(facts, windows))
    if hypervisor in QEMU_HYPERVISORS and facts.guest_agent:
        derived["hw_qemu_guest_agent"] = Fact("yes", facts.guest_agent.evidence)
    if hypervisor in QEMU_HYPERVISORS and (win11 := windows_11(facts)) is not None:
        derived.update(_vtpm(facts, win11))
    derived.update(controllers(facts, profile, hypervisor))
    derived.update(metadata(facts, hypervisor).derived)
    return derived


def _aarch64(arch: Fact) -> dict[str, Fact]:
    """What nova's libvirt driver defaults only when hw_architecture is set, never from
    hw_emulation_architecture: said outright, so no host setting changes it."""
    why = f"aarch64 ({arch.evidence}): nova's libvirt driver boots Arm guests only with UEFI on a virt machine"
    return {"hw_firmware_type": Fact("uefi", why), "hw_machine_type": Fact("virt", why)}


def windows_11(facts: GuestFacts) -> str | None:
    """Evidence that the guest is a Windows 11 client (CurrentBuildNumber >= 22000, not a server),
    which requires UEFI, Secure Boot and TPM 2.0; None otherwise."""
    if facts.windows is None:
        return None
    v = facts.windows.value
    build, kind = v.get("CurrentBuildNumber"), str(v.get("InstallationType") or v.get("EditionID") or "")
    if not isinstance(build, int) or build < osinfo.WINDOWS_11_BUILD or "server" in kind.lower():
        return None
    return f"{facts.windows.evidence} (CurrentBuildNumber={build} >= {osinfo.WINDOWS_11_BUILD}, " \
           f"InstallationType={kind or '?'}: Windows 11 requires UEFI, Secure Boot and TPM 2.0)"


def _vtpm(facts: GuestFacts, why: str) -> dict[str, Fact]:
    derived = {"hw_tpm_version": Fact("2.0", why), "hw_tpm_model": Fact("tpm-crb", why),
               "hw_firmware_type": Fact("uefi", why), "hw_machine_type": Fact("q35", why)}
    chain = facts.secure_boot.value if facts.secure_boot else None
    if chain is None or chain["passes"]:
        shown = why if chain is None else f"{why}; chain: {facts.secure_boot.evidence if facts.secure_boot else ''}"
        derived["os_secure_boot"] = Fact("required", shown)
    return derived


def implied(properties: dict[str, str], facts: GuestFacts | None, hypervisor: str) -> dict[str, str]:
    """What os_secure_boot=required needs on nova's libvirt driver and is not given: UEFI, and on
    x86_64 a q35 machine (on pc the driver ignores Secure Boot). Contradicting values are left
    to refuse."""
    if properties.get("os_secure_boot", "").lower() != "required" or hypervisor not in QEMU_HYPERVISORS:
        return {}
    added = {}
    if "hw_firmware_type" not in properties:
        added["hw_firmware_type"] = "uefi"
    arch = properties.get("architecture") or (facts.architecture.value if facts and facts.architecture else "x86_64")
    if arch == "x86_64" and "hw_machine_type" not in properties:
        added["hw_machine_type"] = "q35"
    return added


def controllers(facts: GuestFacts, profile: Profile, hypervisor: str) -> dict[str, Fact]:
    """The disk controller (and Windows NIC) the guest has drivers for, where the profile's has none."""
    have = drivers_of(facts)
    if have is None or hypervisor not in CHOICES:
        return {}
    names, evidence = have
    windows = facts.windows_drivers is not None
    key, choices = CHOICES[hypervisor]
    derived: dict[str, Fact] = {}
    current = profile.properties.get(key, choices[0].value)
    wanted = next((c for c in choices if c.value.lower() == current.lower()), None)
    if wanted is not None and not _drives(wanted, names, windows):
        usable = next((c for c in choices if _drives(c, names, windows)), None)
        if usable is not None:
            driver = usable.windows if windows else usable.linux
            derived[key] = Fact(usable.value, f"the guest has no {wanted.windows if windows else wanted.linux} for "
                                f"{key}={wanted.value}, but has {driver or 'an inbox driver'} ({evidence})")
    nic_key, nic_driver, nic_fallback = WINDOWS_NIC
    if windows and hypervisor in QEMU_HYPERVISORS and nic_key not in profile.properties and nic_driver not in names:
        derived[nic_key] = Fact(nic_fallback, f"no {nic_driver} (virtio NIC driver) in the guest's services "
                                f"({evidence})")
    return derived


def _drives(controller: Controller, names: set[str], windows: bool) -> bool:
    driver = controller.windows if windows else controller.linux
    return not driver or driver in names


def metadata(facts: GuestFacts, hypervisor: str, declared: frozenset[str] | None = None) -> Outcome:
    """Whether cloud-init (cloudbase-init) reaches this target's metadata on a cloud offering the
    `declared` paths (None: undeclared); img_config_drive when only a config drive does. Targets
    nova no longer drives (xen, uml) are not judged."""
    if hypervisor not in METADATA_PATHS:
        return Outcome()
    if facts.cloud_init is not None:
        return verdict(facts.cloud_init, hypervisor, declared)
    if facts.windows is not None:
        return cloudbase_verdict(facts.cloudbase_init, hypervisor, declared)
    return Outcome()


def _windows_distro(facts: GuestFacts, windows: Fact) -> dict[str, Fact]:
    derived = {"os_distro": Fact("windows", windows.evidence)}
    if facts.windows is not None:
        version, _ = osinfo.windows_properties(facts.windows.value)
        if version:
            derived["os_version"] = Fact(version, f"{facts.windows.evidence} (CurrentMajorVersionNumber, "
                                         "CurrentMinorVersionNumber)")
    return derived


def _os_distro(os_release: Fact) -> dict[str, Fact]:
    """os_distro/os_version in Glance's vocabulary; never on vmware, where nova would send os_distro
    to vCenter as the guestId instead of vmware_ostype, and vCenter rejects names like "ubuntu"."""
    found = {"os_distro": osinfo.os_distro(os_release.value), "os_version": osinfo.os_version(os_release.value)}
    return {key: Fact(got.value, f"{os_release.evidence} ({got.why})") for key, got in found.items() if got}


def _vmware(facts: GuestFacts, windows: Fact | None) -> dict[str, Fact]:
    if windows and facts.windows is not None:
        _, guest_id = osinfo.windows_properties(facts.windows.value)
        v = facts.windows.value
        return {"vmware_ostype": Fact(guest_id, f"{facts.windows.evidence} (CurrentBuildNumber="
                                      f"{v.get('CurrentBuildNumber')}, InstallationType={v.get('InstallationType')})")}
    if windows:
        return {"vmware_ostype": Fact(osinfo.WINDOWS_VMWARE, f"{windows.evidence} (Windows, version not read)")}
    if facts.os_release:
        got = osinfo.vmware_guest_id(facts.os_release.value, facts.kernel.value if facts.kernel else "")
        return {"vmware_ostype": Fact(got.value, f"{facts.os_release.evidence} ({got.why})")}
    return {}


def to_dict(derived: dict[str, Fact]) -> dict[str, dict[str, str]]:
    return {k: {"value": f.value, "evidence": f.evidence} for k, f in derived.items()}
