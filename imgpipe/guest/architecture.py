"""A guest's architecture from each thing that has one: ELF binaries (init, shell), the EFI
loader's PE machine, the kernel image's header. They must agree: a disk whose loader is arm64
and whose userland is x86_64 boots nowhere, and picking one of them would hide it.

Names are nova's (nova.objects.fields.Architecture, policy.nova): `aarch64`, never `arm64`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from imgpipe.guest import pe
from imgpipe.guest.facts import Fact

# ELF e_machine -> name; EM_PPC64 is ppc64le or ppc64 by the ELF's byte order.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i686", 0xF3: "riscv64", 0x28: "armv7l",
                0x16: "s390x", 0x15: "ppc64le"}
# A 64-bit kernel runs this 32-bit userland: the guest needs the kernel's architecture.
COMPATIBLE = {("x86_64", "i686"), ("aarch64", "armv7l")}
KERNEL_HEAD = 4096
_GZIP = b"\x1f\x8b"


def elf(head: bytes) -> tuple[str, int] | None:
    """(architecture, e_machine) of an ELF header, None when not ELF or not a known machine."""
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    little = head[5] == 1
    machine = int.from_bytes(head[18:20], "little" if little else "big")
    name = ELF_MACHINES.get(machine)
    if name == "ppc64le" and not little:
        name = "ppc64"
    return (name, machine) if name else None


def kernel(head: bytes) -> tuple[str, str] | None:
    """(architecture, what said so) of a kernel image's first bytes: an arm64 Image (gzip'd as
    Debian ships it, or not), an x86 bzImage, a riscv Image, an ELF vmlinux, an EFI zboot image."""
    if head[:2] == _GZIP:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, KERNEL_HEAD)
        except zlib.error:
            return None
        got = kernel(head)
        return (got[0], f"gzip'd, {got[1]}") if got else None
    if head[0x38:0x3C] == b"ARM\x64":
        return "aarch64", "arm64 Image magic ARM\\x64 at 0x38"
    if head[0x38:0x3C] == b"RSC\x05":
        return "riscv64", "RISC-V Image magic RSC\\x05 at 0x38"
    if head[0x202:0x206] == b"HdrS":
        protocol = int.from_bytes(head[0x206:0x208], "little")
        xloadflags = int.from_bytes(head[0x236:0x238], "little") if protocol >= 0x20C else 0
        if xloadflags & 1:
            return "x86_64", "bzImage HdrS at 0x202, XLF_KERNEL_64"
        return "i686", "bzImage HdrS at 0x202, no XLF_KERNEL_64"
    if (found := elf(head)) is not None:
        return found[0], f"ELF e_machine {found[1]:#x}"
    machine = pe.machine(head)
    if machine not in (None, "unknown"):
        return machine, "PE machine"
    return None


@dataclass(frozen=True)
class Decision:
    architecture: Fact | None
    conflict: str | None  # both sides named, when two sources disagree


def decide(loaders: list[Fact], inside: list[Fact]) -> Decision:
    """One architecture from the EFI loaders' PE machines and what is inside the guest (its
    kernel's header, its ELF binaries), each a Fact whose value is a name. The loaders on an
    ESP may cover several architectures (an install medium's); the guest's is the one its
    kernel and userland share."""
    if not inside:
        names = sorted({s.value for s in loaders})
        if not names:
            return Decision(None, None)
        return Decision(Fact(names[0], loaders[0].evidence if len(names) == 1 else
                             f"{', '.join(names)} loaders; {names[0]} taken ({loaders[0].evidence})"), None)
    # a 32-bit userland under a 64-bit kernel: the guest is the kernel's
    first = max(inside, key=lambda s: _width(s.value))
    for other in inside:
        if other.value != first.value and (first.value, other.value) not in COMPATIBLE:
            return Decision(first, f"{first.value} ({first.evidence}) but {other.value} ({other.evidence})")
    matching = [loader for loader in loaders if _agree(first.value, loader.value)]
    if loaders and not matching:
        loader = loaders[0]
        return Decision(first, f"{loader.value} ({loader.evidence}) but {first.value} ({first.evidence})")
    return Decision(Fact(first.value, "; ".join(s.evidence for s in [*matching[:1], *inside])), None)


def _agree(guest: str, loader: str) -> bool:
    return guest == loader or (loader, guest) in COMPATIBLE


def _width(name: str) -> int:
    return 64 if name.endswith("64") or name in ("s390x", "ppc64le") else 32
