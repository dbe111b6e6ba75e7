"""Profiles this guest cannot boot on, decided before anything is converted or uploaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe.guest.facts import GuestFacts
from imgpipe.guest.policy import derive, nova
from imgpipe.guest.policy.controllers import CONTROLLERS
from imgpipe.profiles import Profile

OVERRIDE = "or --force-boot"


@dataclass
class Verdict:
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(src: Path, facts: GuestFacts, profile: Profile, properties: dict[str, str],
          clouds: Sequence[tuple[str, frozenset[str] | None]] = ()) -> Verdict:
    """Refusals (one line each, with what to do instead) and checks that could not be made;
    `clouds`: each target cloud's name and the metadata paths it declares (None: undeclared)."""
    verdict = Verdict()
    if not profile.converts:
        return verdict
    name = f"{src.name}: profile {profile.name}"
    if profile.extract == "root-partition":
        _root(name, facts, verdict)
    else:
        _firmware(name, facts, properties, verdict)
    _drivers(name, facts, properties, verdict)
    _metadata(name, facts, profile, verdict, clouds)
    _architecture(name, facts, derive.hypervisor_of(profile), verdict)
    _secure_boot(name, facts, properties, derive.hypervisor_of(profile), verdict)
    verdict.refusals += [f"{name}: {problem}; {OVERRIDE}" for problem in nova.problems(properties)]
    return verdict


def _architecture(name: str, facts: GuestFacts, hypervisor: str, verdict: Verdict) -> None:
    if facts.architecture_conflict:
        verdict.refusals.append(f"{name}: the guest's architecture disagrees with itself: "
                                f"{facts.architecture_conflict}; {OVERRIDE}")
    if facts.architecture is None:
        return
    arch = facts.architecture.value
    if arch not in nova.X86 and hypervisor in nova.X86_ONLY:
        verdict.refusals.append(f"{name}: the guest is {arch} ({facts.architecture.evidence}), but "
                                f"{nova.X86_ONLY[hypervisor]} runs only x86 guests; use -p kvm, {OVERRIDE}")
    elif arch not in nova.ARCHITECTURES:
        verdict.warnings.append(f"{name}: the guest is {arch}, which nova has no name for: architecture not set")


def _secure_boot(name: str, facts: GuestFacts, props: dict[str, str], hypervisor: str, verdict: Verdict) -> None:
    """os_secure_boot=required (asked or derived) for a chain Microsoft-keyed firmware refuses, or
    with firmware or a machine on which nova's libvirt driver cannot turn Secure Boot on."""
    if props.get("os_secure_boot", "").lower() != "required":
        return
    chain = facts.secure_boot
    if chain is not None and not chain.value["passes"]:
        verdict.refusals.append(f"{name}: os_secure_boot=required, but {chain.value['refused']}; sign the chain "
                                f"(shim-signed, grub-efi-*-signed, a signed kernel) or drop os_secure_boot, {OVERRIDE}")
    elif chain is None and not facts.uefi:
        verdict.refusals.append(f"{name}: os_secure_boot=required, but the disk has no EFI loader to verify; "
                                f"{OVERRIDE}")
    elif chain is None:
        verdict.warnings.append(f"{name}: os_secure_boot=required, but no removable-path loader was read: "
                                "its signatures not checked")
    if hypervisor not in derive.QEMU_HYPERVISORS:
        return
    firmware = props.get("hw_firmware_type", "").lower()
    if firmware != "uefi":
        verdict.refusals.append(f"{name}: os_secure_boot=required needs hw_firmware_type=uefi, not "
                                f"{firmware or 'unset (bios)'}; {OVERRIDE}")
    machine = props.get("hw_machine_type", "").lower()
    arch = props.get("architecture") or (facts.architecture.value if facts.architecture else "x86_64")
    if arch == "x86_64" and not machine.startswith(("q35", "pc-q35")):
        verdict.refusals.append(f"{name}: os_secure_boot=required on x86_64 needs hw_machine_type=q35 (nova's "
                                f"libvirt driver ignores Secure Boot on {machine or 'its pc default'}); {OVERRIDE}")


def _firmware(name: str, facts: GuestFacts, props: dict[str, str], verdict: Verdict) -> None:
    machine = props.get("hw_machine_type", "")
    if not facts.whole_disk_bootable:
        verdict.refusals.append(f"{name} boots the whole disk, but it has no boot path (no ESP with an "
                                f"EFI loader, no BIOS boot code); use a bootable image, {OVERRIDE}")
    elif machine == "hyperv-gen2" and not facts.uefi:
        verdict.refusals.append(f"{name} (Gen2) needs a UEFI boot path; this disk boots only with BIOS "
                                f"(no ESP with an EFI loader); use -p hyperv-gen1, {OVERRIDE}")
    elif machine == "hyperv-gen1" and facts.bios is None:
        verdict.refusals.append(f"{name} (Gen1) needs a BIOS boot path; this disk boots only with UEFI "
                                f"(no BIOS boot code); use -p hyperv, {OVERRIDE}")


def _root(name: str, facts: GuestFacts, verdict: Verdict) -> None:
    if facts.root is None:
        verdict.warnings.append(f"{name}: no Linux root filesystem found; init not checked")
    elif facts.root.value["filesystem"] not in ("ext2", "ext3", "ext4"):
        verdict.warnings.append(f"{name}: root is {facts.root.value['filesystem']}; init not checked")
    elif facts.init is None:
        verdict.refusals.append(f"{name} boots the root filesystem ({facts.root.evidence}) with its init, "
                                f"but it has none (/sbin/init, systemd); {OVERRIDE}")


def _drivers(name: str, facts: GuestFacts, props: dict[str, str], verdict: Verdict) -> None:
    windows = facts.windows_drivers is not None  # Windows names its drivers as services in SYSTEM
    needed = [(k, v, c.windows if windows else c.linux) for (k, v), c in CONTROLLERS.items()
              if c.required and props.get(k, "").lower() == v]
    if not needed:
        return
    have = derive.drivers_of(facts)
    if have is None:
        verdict.warnings.append(f"{name}: no guest kernel modules found; cannot check the "
                                f"{', '.join(d for _, _, d in needed)} driver")
        return
    names, evidence = have
    for key, _, driver in needed:
        if driver not in names:
            verdict.refusals.append(f"{name} needs the {driver} driver for {key}={props[key]}, but the "
                                    f"guest lacks it ({evidence}); {OVERRIDE}")


def _metadata(name: str, facts: GuestFacts, profile: Profile, verdict: Verdict,
              clouds: Sequence[tuple[str, frozenset[str] | None]]) -> None:
    """An image whose cloud-init never reaches the metadata a cloud offers boots without its SSH key."""
    for cloud, declared in clouds or (("", None),):
        outcome = derive.metadata(facts, derive.hypervisor_of(profile), declared)
        where = f"{name} on cloud {cloud}" if cloud else name
        if outcome.refusal:
            verdict.refusals.append(f"{where}: {outcome.refusal}; {OVERRIDE}")
        if outcome.warning and f"{name}: {outcome.warning}" not in verdict.warnings:
            verdict.warnings.append(f"{name}: {outcome.warning}")
