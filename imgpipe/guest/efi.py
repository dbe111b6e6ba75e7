"""EFI loaders on the EFI system partition: which ones are real PE images, for which architecture."""

from __future__ import annotations

from pathlib import Path

from imgpipe.guest.facts import Fact
from imgpipe.guest.fs import fat

# PE/COFF machine field -> nova architecture.
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x14C: "i686", 0x5064: "riscv64", 0x1C4: "armv7l"}
_PE_HEAD = 4096


def loaders(image: Path, label: str) -> list[Fact]:
    """Every *.EFI file under EFI/ that is a real PE image, with its architecture as the value."""
    found = []
    for path in fat.listing(image, label, "::/EFI"):
        if not path.lower().endswith(".efi"):
            continue
        head = fat.head(image, path, _PE_HEAD)
        arch = _pe_machine(head) if head is not None else None
        if arch is not None:
            found.append(Fact({"path": path.removeprefix("::/"), "architecture": arch},
                              f"{label} {path.removeprefix('::/')} (PE machine)"))
    return found


def _pe_machine(head: bytes) -> str | None:
    if head[:2] != b"MZ" or len(head) < 64:
        return None
    pe = int.from_bytes(head[60:64], "little")
    if head[pe:pe + 4] != b"PE\0\0":
        return None
    return PE_MACHINES.get(int.from_bytes(head[pe + 4:pe + 6], "little"), "unknown")
