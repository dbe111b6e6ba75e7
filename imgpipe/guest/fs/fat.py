"""A FAT filesystem (the EFI system partition) read with mtools: no mount, no kernel driver."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs.partition import TOOL_LIMITS
from imgpipe.runner import CommandFailed, run


def listing(image: Path, label: str, directory: str) -> list[str]:
    """Every path under `directory` (mtools' "::/" form), recursively."""
    result = run(["mdir", "-i", str(image), "-/", "-b", directory], limits=TOOL_LIMITS, ok_codes=(0, 1))
    if "Cannot initialize" in result.stderr:
        why = result.stderr.strip().splitlines()[0]
        raise GuestInspectionError(f"{label}: corrupt FAT filesystem: {why}")
    return [path for line in result.stdout.splitlines() if (path := line.strip())]


def head(image: Path, path: str, length: int) -> bytes | None:
    """The first `length` bytes of a file, or None when mtools cannot copy it out."""
    with tempfile.TemporaryDirectory(prefix="imgpipe-esp-", dir=image.parent) as tmp:
        out = Path(tmp) / "file"
        try:
            run(["mcopy", "-n", "-i", str(image), path, str(out)], limits=TOOL_LIMITS)
        except CommandFailed:
            return None
        with out.open("rb") as f:
            return f.read(length)
