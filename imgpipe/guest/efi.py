"""EFI loaders on the EFI system partition: which ones are real PE images, for which architecture."""

from __future__ import annotations

from imgpipe.guest import pe
from imgpipe.guest.facts import Fact
from imgpipe.guest.fs import fat


def loaders(esp: fat.Fat, label: str) -> list[Fact]:
    """Every *.EFI file under EFI/ that is a real PE image, with its architecture as the value."""
    found = []
    for file in esp.files("EFI"):
        if not file.path.lower().endswith(".efi"):
            continue
        arch = pe.machine(esp.read(file, pe.HEAD))
        if arch is not None:
            found.append(Fact({"path": file.path, "architecture": arch}, f"{label} {file.path} (PE machine)"))
    return found


def read(esp: fat.Fat, path: str, limit: int) -> bytes | None:
    """A file on the ESP (a path like EFI/BOOT/BOOTX64.EFI, any case), whole up to `limit` bytes."""
    file = esp.find(path)
    return esp.read(file, limit) if file is not None else None
