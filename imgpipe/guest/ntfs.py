"""NTFS, listed with ntfs-3g's ntfsls (userspace, no mount): is there a Windows installation."""

from __future__ import annotations

import shutil
from pathlib import Path

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.facts import Fact
from imgpipe.guest.reader import TOOL_LIMITS
from imgpipe.runner import run


def available() -> bool:
    return shutil.which("ntfsls") is not None


def windows(image: Path, label: str) -> Fact | None:
    """os_type=windows when the volume has Windows/System32 (where every Windows keeps its kernel)."""
    top = _ls(image, "/", label)
    windir = next((n for n in top if n.lower() == "windows"), None)
    if windir is None:
        return None
    system32 = next((n for n in _ls(image, f"/{windir}", label) if n.lower() == "system32"), None)
    if system32 is None:
        return None
    return Fact("windows", f"{label} /{windir}/{system32}")


def _ls(image: Path, path: str, label: str) -> list[str]:
    result = run(["ntfsls", "-f", "-p", path, str(image)], limits=TOOL_LIMITS, ok_codes=range(256))
    if result.returncode:
        if "not found" in result.stderr.lower() or "Failed to find" in result.stderr:
            return []
        why = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise GuestInspectionError(f"{label}: corrupt NTFS filesystem: {why}")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]
