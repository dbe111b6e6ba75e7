"""The EFI system partition, read with mtools (no mount): which EFI loaders it holds."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.facts import Fact
from imgpipe.guest.fs.partition import TOOL_LIMITS
from imgpipe.runner import CommandFailed, run

# PE/COFF machine field -> nova architecture.
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x14C: "i686", 0x5064: "riscv64", 0x1C4: "armv7l"}
_PE_HEAD = 4096


def loaders(image: Path, label: str) -> list[Fact]:
    """Every *.EFI file under EFI/ that is a real PE image, with its architecture as the value."""
    result = run(["mdir", "-i", str(image), "-/", "-b", "::/EFI"], limits=TOOL_LIMITS, ok_codes=(0, 1))
    if "Cannot initialize" in result.stderr:
        why = result.stderr.strip().splitlines()[0]
        raise GuestInspectionError(f"{label}: corrupt FAT filesystem: {why}")
    listing = result.stdout
    found = []
    for line in listing.splitlines():
        path = line.strip()
        if not path.lower().endswith(".efi"):
            continue
        arch = _pe_machine(image, path)
        if arch is not None:
            found.append(Fact({"path": path.removeprefix("::/"), "architecture": arch},
                              f"{label} {path.removeprefix('::/')} (PE machine)"))
    return found


def _pe_machine(image: Path, path: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="imgpipe-esp-", dir=image.parent) as tmp:
        out = Path(tmp) / "loader.efi"
        try:
            run(["mcopy", "-n", "-i", str(image), path, str(out)], limits=TOOL_LIMITS)
        except CommandFailed:
            return None
        with out.open("rb") as f:
            head = f.read(_PE_HEAD)
    if head[:2] != b"MZ" or len(head) < 64:
        return None
    pe = int.from_bytes(head[60:64], "little")
    if head[pe:pe + 4] != b"PE\0\0":
        return None
    return PE_MACHINES.get(int.from_bytes(head[pe + 4:pe + 6], "little"), "unknown")
