"""Whether a guest's boot chain passes firmware that enforces Secure Boot with Microsoft's keys
(the default of PCs and of OVMF/AAVMF's .ms variable stores, and what nova's libvirt driver
boots with os_secure_boot=required).

The chain, as the firmware walks it: the removable-path loader (EFI/BOOT/BOOTX64.EFI,
BOOTAA64.EFI) must chain to a CA in the firmware's db; when it is shim, it trusts its own
.vendor_cert besides, and verifies the GRUB beside it (grubx64.efi), which through shim's
protocol verifies the kernel. Each step is judged from its Authenticode signatures
(guest.authenticode): only one that holds for the bytes read (image digest, signature over its
attributes) counts, as the firmware counts it; a step that was not read is named, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgpipe.guest import authenticode, pe, sbat
from imgpipe.guest.facts import Fact

REMOVABLE = {"x86_64": "EFI/BOOT/BOOTX64.EFI", "aarch64": "EFI/BOOT/BOOTAA64.EFI", "i686": "EFI/BOOT/BOOTIA32.EFI",
             "riscv64": "EFI/BOOT/BOOTRISCV64.EFI"}
# What shim loads after itself, from its own directory (shim's DEFAULT_LOADER).
SHIM_NEXT = {"x86_64": "grubx64.efi", "aarch64": "grubaa64.efi", "i686": "grubia32.efi"}
LOADER_LIMIT = 64 << 20


@dataclass(frozen=True)
class Step:
    path: str
    signatures: tuple[authenticode.Signature, ...]
    trusted_by: str | None  # the CA (db entry or shim's vendor certificate) that admits it
    notes: tuple[str, ...] = ()

    @property
    def signers(self) -> tuple[tuple[str, ...], ...]:
        """Each signature's chain, leaf first."""
        return tuple(s.chain for s in self.signatures)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "signers": [" <- ".join(c) for c in self.signers], "trusted_by": self.trusted_by,
                "checks": [s.problem or f"holds: image {s.digest[:23]}.. as signed, signature verifies"
                           for s in self.signatures]}


@dataclass
class Chain:
    """What was read of the chain; `passes` is False as soon as one step would be refused."""

    steps: list[Step] = field(default_factory=list)
    refused: str = ""  # the first step the firmware or shim would refuse, and why
    unread: list[str] = field(default_factory=list)
    shim: dict[str, Any] | None = None  # vendor_cert and sbat of a shim loader

    @property
    def passes(self) -> bool:
        return not self.refused

    def value(self) -> dict[str, Any]:
        return {"passes": self.passes, "refused": self.refused or None, "steps": [s.to_dict() for s in self.steps],
                "shim": self.shim, "unread": self.unread}


def judge(loader_path: str, loader: bytes, next_stage: tuple[str, bytes] | None, kernel: Fact | None,
          keys: tuple[str, ...] = authenticode.MICROSOFT_DB) -> Chain:
    """The chain from the loader's bytes, the bytes of what a shim loads next (None: not found),
    and the kernel's signatures (a Fact of authenticode.Signed; None: no kernel read, as on Windows)."""
    chain = Chain()
    first = _step(loader_path, loader, keys)
    chain.steps.append(first)
    if first.trusted_by is None:
        chain.refused = _why(first, "the firmware", keys)
        return chain
    vendor = _vendor(loader)
    if vendor is None:
        return chain  # not a shim: a loader admitted by the db runs what it likes (Windows' boot manager)
    level = sbat.previous_level(pe.parse(loader).section(loader, ".sbatlevel"))
    chain.shim = {"vendor_cert": vendor, "sbat": authenticode.sbat(loader), "sbat_level": str(level) if level else None}
    shim_keys = (vendor, *keys)
    if next_stage is None:
        chain.unread.append(f"what shim loads next ({loader_path.rsplit('/', 1)[0]}/grub*.efi) is not on the ESP")
    else:
        grub = _step(*next_stage, shim_keys)
        chain.steps.append(grub)
        if grub.trusted_by is None:
            chain.refused = _why(grub, "shim (Verification failed)", shim_keys)
            return chain
        if level is None:
            chain.unread.append("shim has no .sbatlevel: GRUB's .sbat not compared with a revocation level")
        elif problem := _below(next_stage[1], level):
            chain.refused = f"{grub.path} {problem}: shim refuses it (SBAT, Security Policy Violation)"
            return chain
    if kernel is None:
        chain.unread.append("no kernel image read: its signature not checked")
        return chain
    signed: authenticode.Signed = kernel.value
    step = Step(kernel.evidence, signed.signatures, _trusted(signed.signatures, shim_keys), signed.unreadable)
    chain.steps.append(step)
    if step.trusted_by is None:
        chain.refused = _why(step, "GRUB through shim's verifier (bad shim signature)", shim_keys)
    return chain


def _step(path: str, data: bytes, keys: tuple[str, ...]) -> Step:
    try:
        signed = authenticode.signatures(data)
    except pe.PeError as exc:
        return Step(path, (), None, (str(exc),))
    return Step(path, signed.signatures, _trusted(signed.signatures, keys), signed.unreadable)


def _trusted(signatures: tuple[authenticode.Signature, ...], keys: tuple[str, ...]) -> str | None:
    """The key that admits the image: the first signature that holds and chains to one."""
    return next((n for s in signatures if s.holds and (n := s.chains_to(keys))), None)


def _below(image: bytes, level: sbat.Level) -> str:
    """Why shim's SBAT check refuses a binary it loads itself (where .sbat is mandatory); "" if not."""
    try:
        lines = authenticode.sbat(image)
    except pe.PeError as exc:
        return f"has no readable .sbat ({exc})"
    if not lines:
        return f"has no .sbat section, which shim requires of what it loads under SBAT level {level}"
    low = sbat.revoked(level, sbat.generations(lines))
    return f"is revoked by shim's SBAT level {level}: {', '.join(low)}" if low else ""


def _vendor(loader: bytes) -> str | None:
    try:
        return authenticode.vendor_cert(loader)
    except pe.PeError:
        return None


def _why(step: Step, judge_name: str, keys: tuple[str, ...]) -> str:
    broken = next((s for s in step.signatures if s.chains_to(keys) and not s.holds), None)
    if broken is not None:  # signed by the right key, but not these bytes (altered after signing)
        what = f"is signed by {' <- '.join(broken.chain)}, but {broken.problem}"
    elif not step.signers:
        what = "is not signed" + (f" ({step.notes[0]})" if step.notes else "")
    else:
        what = "is signed by " + "; ".join(" <- ".join(c) for c in step.signers) + ", none of them " + \
            f"chaining to {' / '.join(keys[:2]) if judge_name == 'the firmware' else ' / '.join(keys[:1])}"
    return f"{step.path} {what}: {judge_name} refuses it"
