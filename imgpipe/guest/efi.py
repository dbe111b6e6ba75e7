"""EFI loaders on the EFI system partition: which ones are real PE images, for which architecture."""

from __future__ import annotations

from imgpipe.guest.facts import Fact
from imgpipe.guest.fs import fat

# PE/COFF machine field -> nova architecture.
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x14C: "i686", 0x5064: "riscv64", 0x1C4: "armv7l"}
_PE_HEAD = 4096


def loaders(esp: fat.Fat, label: str) -> list[Fact]:
    """Every *.EFI file under EFI/ that is a real PE image, with its architecture as the value."""
    found = []
    for file in esp.files("EFI"):
        if not file.path.lower().endswith(".efi"):
            continue
        arch = _pe_machine(esp.read(file, _PE_HEAD))
        if arch is not None:
            found.append(Fact({"path": file.path, "architecture": arch}, f"{label} {file.path} (PE machine)"))
    return found


def _pe_machine(head: bytes) -> str | None:
    if head[:2] != b"MZ" or len(head) < 64:
        return None
    pe = int.from_bytes(head[60:64], "little")
    if head[pe:pe + 4] != b"PE\0\0":
        return None
    return PE_MACHINES.get(int.from_bytes(head[pe + 4:pe + 6], "little"), "unknown")
