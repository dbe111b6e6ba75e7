"""Windows-like NTFS volumes for tests: mkntfs on a sparse file, filled through an ntfs-3g FUSE
mount (tests only; the product never mounts), with registry hives from regf_writer."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from regf_writer import Expand, Key, build

CONFIG = "Windows/System32/config"
CLOUDBASE_CONF = "Program Files/Cloudbase Solutions/Cloudbase-Init/conf/cloudbase-init.conf"
NOISE_SERVICES = ("ACPI", "disk", "volmgr", "Tcpip", "NetBT", "storahci", "stornvme", "vmbus", "W32Time")


@dataclass
class Windows:
    product_name: str
    edition_id: str
    installation_type: str
    build: str
    display_version: str | None = None
    release_id: str | None = None
    ubr: int = 1000
    legacy_version: bool = False  # only CurrentVersion "6.3", as before Windows 10
    drivers: dict[str, int] = field(default_factory=dict)  # service -> Start
    current: int = 1


def software_hive(w: Windows) -> bytes:
    root = Key("ROOT")
    values: dict[str, str | int | bytes | Expand] = {
        "ProductName": w.product_name, "EditionID": w.edition_id, "InstallationType": w.installation_type,
        "CurrentBuildNumber": w.build, "CurrentBuild": w.build, "UBR": w.ubr, "CurrentVersion": "6.3",
        "SystemRoot": "C:\\Windows", "DigitalProductId": bytes(range(64))}
    if not w.legacy_version:
        values |= {"CurrentMajorVersionNumber": 10, "CurrentMinorVersionNumber": 0}
    if w.display_version:
        values["DisplayVersion"] = w.display_version
    if w.release_id:
        values["ReleaseId"] = w.release_id
    root.add(r"Microsoft\Windows NT\CurrentVersion", values)
    for name in ("Classes", "Clients", "Policies", "RegisteredApplications"):
        root.add(name, {"": "noise"})
    for name in ("Windows\\CurrentVersion", "Cryptography", "Windows NT\\CurrentVersion\\Fonts"):
        root.add(f"Microsoft\\{name}", {"Version": 1})
    return build(root, "SOFTWARE")[0]


def system_hive(w: Windows) -> bytes:
    root = Key("ROOT")
    root.add("Select", {"Current": w.current, "Default": w.current, "LastKnownGood": 3 - w.current, "Failed": 0})
    for number in (1, 2):
        services = root.add(f"ControlSet{number:03d}\\Services")
        for name in NOISE_SERVICES:
            services.add(name, {"Start": 0, "Type": 1, "ImagePath": Expand(f"System32\\drivers\\{name}.sys")})
        if number == w.current:
            for name, start in w.drivers.items():
                services.add(name, {"Start": start, "Type": 1, "ErrorControl": 1,
                                    "ImagePath": Expand(f"\\SystemRoot\\System32\\drivers\\{name}.sys")})
        else:  # the other control set says the opposite, so reading the wrong one shows
            services.add("vioscsi", {"Start": 0, "ImagePath": Expand("wrong-control-set")})
    return build(root, "SYSTEM")[0]


def windows_files(w: Windows, system32: str = "Windows/System32", config: str = "config") -> dict[str, bytes]:
    return {f"{system32}/{config}/SOFTWARE": software_hive(w), f"{system32}/{config}/SYSTEM": system_hive(w),
            f"{system32}/ntoskrnl.exe": b"MZ" + bytes(4094)}


@contextlib.contextmanager
def mounted(image: Path) -> Iterator[Path]:
    """ntfs-3g's FUSE mount of `image`, unmounted whatever happens (fixture building only)."""
    with tempfile.TemporaryDirectory(prefix="ntfs-mnt-") as mnt:
        subprocess.run(["ntfs-3g", str(image), mnt], check=True, capture_output=True)
        try:
            yield Path(mnt)
        finally:
            _unmount(mnt)


def _unmount(mnt: str) -> None:
    """fusermount -u, retried: it fails with EBUSY while ntfs-3g still flushes a large write."""
    for _ in range(20):
        done = subprocess.run(["fusermount", "-u", mnt], check=False, capture_output=True, text=True)
        if done.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"fusermount -u {mnt}: {done.stderr.strip()}")


def ntfs_volume(image: Path, files: dict[str, bytes], size: int = 64 << 20) -> Path:
    """A fresh NTFS volume holding `files` (relative path -> content)."""
    image.unlink(missing_ok=True)
    with image.open("wb") as f:
        f.truncate(size)
    subprocess.run(["mkntfs", "-q", "-F", "-Q", str(image)], check=True, capture_output=True)
    with mounted(image) as mnt:
        for rel, data in files.items():
            path = mnt / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.sync()
    return image
