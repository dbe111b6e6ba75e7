#!/usr/bin/env python3
"""Debian 12's signed EFI binaries, for the Authenticode reader's tests without a guest or a boot:
shimx64.efi.signed (dual-signed by Microsoft UEFI CA 2011 and 2023) and grubx64.efi.signed
(Debian Secure Boot CA), from the host's apt sources, the same packages strict_guests puts on
the signed guest's ESP. Fetched once under the imgpipe cache dir, locked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from imgpipe_dev import debian_guest as dg

PACKAGES = ("shim-signed", "grub-efi-amd64-signed")
FILES = {"shim": "usr/lib/shim/shimx64.efi.signed", "grub": "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"}


def cache_dir() -> Path:
    base = os.environ.get("IMGPIPE_CACHE_DIR") or Path.home() / ".cache" / "imgpipe"
    return Path(base) / "signed-loaders" / hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def cached() -> dict[str, Path]:
    """"shim" and "grub" -> their signed binaries, downloaded on first use."""
    out = cache_dir()
    found = {name: out / Path(path).name for name, path in FILES.items()}
    if all(p.exists() for p in found.values()):
        return found
    out.mkdir(parents=True, exist_ok=True)
    with dg._locked(out / ".lock"):
        if not all(p.exists() for p in found.values()):
            with tempfile.TemporaryDirectory(prefix="signed-loaders-", dir=out) as tmp:
                work = Path(tmp)
                subprocess.run(["apt-get", "download", *PACKAGES], cwd=work, check=True, capture_output=True)
                for deb in work.glob("*.deb"):
                    dg._run("dpkg-deb", "-x", deb, work / "x")
                for name, path in FILES.items():
                    (work / "x" / path).rename(found[name])
    return found


if __name__ == "__main__":
    for name, path in cached().items():
        print(name, path)
