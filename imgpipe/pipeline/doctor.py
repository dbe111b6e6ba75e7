"""`imgpipe doctor`: every external tool and firmware file a command may need, the profiles, and
each cloud. A tool only some sources or features need is optional: missing, it is a warning
that names what will not work and the Debian package that brings it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from imgpipe import profiles
from imgpipe.boot.firmware import AAVMF, OVMF
from imgpipe.boot.machine import OVMF_CODE, OVMF_VARS, QEMU
from imgpipe.cloud.connection import ConnectOptions
from imgpipe.cloud.doctor import Check, cloud_checks
from imgpipe.errors import CloudConfigError, ImgpipeError, ProfileError, ToolMissingError
from imgpipe.runner import run

GUEST_INSPECTION = "guest inspection (inspect, convert, publish, boot-check)"


@dataclass(frozen=True)
class Need:
    """A program on PATH, or a file (firmware) when `path` is given."""

    name: str
    package: str  # Debian's
    needed_for: str
    required: bool = False
    path: Path | None = None

    def found(self) -> str | None:
        if self.path is not None:
            return str(self.path) if self.path.is_file() else None
        return shutil.which(self.name)


NEEDS = (
    Need("qemu-img", "qemu-utils", "every command that reads or writes an image", required=True),
    Need("qemu-nbd", "qemu-utils", f"{GUEST_INSPECTION}; the native streamOptimized writer", required=True),
    Need("debugfs", "e2fsprogs", f"{GUEST_INSPECTION}: ext4 files the built-in reader leaves (inline data)"),
    Need("ntfsls", "ntfs-3g", f"{GUEST_INSPECTION}: Windows guests"),
    Need("ntfsinfo", "ntfs-3g", f"{GUEST_INSPECTION}: Windows guests"),
    Need("ntfscat", "ntfs-3g", f"{GUEST_INSPECTION}: Windows guests"),
    Need("prlimit", "util-linux", f"{GUEST_INSPECTION}: Windows guests (limits the ntfs-3g tools)"),
    Need("xz", "xz-utils", ".xz sources"),
    Need("zstd", "zstd", ".zst sources"),
    Need("lbzip2", "lbzip2", ".bz2 sources on every core (bzip2 otherwise)"),
    Need("bzip2", "bzip2", ".bz2 sources"),
    Need(QEMU, "qemu-system-x86", "boot-check and publish --boot-check"),
    Need("OVMF code", "ovmf", "boot-check of UEFI images", path=OVMF_CODE),
    Need("OVMF variables", "ovmf", "boot-check of UEFI images", path=OVMF_VARS),
    Need("OVMF Secure Boot code", "ovmf", "boot-check with os_secure_boot=required",
         path=OVMF / "OVMF_CODE_4M.secboot.fd"),
    Need("OVMF Microsoft keys", "ovmf", "boot-check with os_secure_boot=required", path=OVMF / "OVMF_VARS_4M.ms.fd"),
    Need("qemu-system-aarch64", "qemu-system-arm", "boot-check of aarch64 images"),
    Need("AAVMF code", "qemu-efi-aarch64", "boot-check of aarch64 images", path=AAVMF / "AAVMF_CODE.fd"),
    Need("AAVMF variables", "qemu-efi-aarch64", "boot-check of aarch64 images", path=AAVMF / "AAVMF_VARS.fd"),
    Need("swtpm", "swtpm", "boot-check with hw_tpm_version (vTPM)"),
)


def run_checks(connect: ConnectOptions, profile_dirs: list[Path]) -> list[Check]:
    checks = [_qemu_img(), *(_need(n) for n in NEEDS if n.name != "qemu-img"), _kvm(), _profiles(profile_dirs)]
    for name in connect.labels():
        checks += cloud_checks(name, connect)
    return checks


def failure(checks: list[Check]) -> ImgpipeError | None:
    """The first failed check that is not optional, as the error its kind exits with."""
    failed = next((c for c in checks if not c.ok and not c.optional), None)
    if failed is None:
        return None
    kind: type[ImgpipeError] = (ToolMissingError if failed.name in {n.name for n in NEEDS} else
                                ProfileError if failed.name == "profiles" else CloudConfigError)
    return kind(f"{failed.name}: {failed.detail}")


def _qemu_img() -> Check:
    try:
        first = run(["qemu-img", "--version"]).stdout.splitlines()[0]
    except ImgpipeError as exc:
        return Check("qemu-img", False, str(exc))
    return Check("qemu-img", True, first)


def _need(need: Need) -> Check:
    where = need.found()
    if where:
        return Check(need.name, True, f"{where} (for {need.needed_for})")
    return Check(need.name, False, f"missing: apt-get install {need.package} (for {need.needed_for})",
                 optional=not need.required)


def _kvm() -> Check:
    """boot-check works without KVM, under TCG: a boot takes minutes instead of seconds."""
    ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return Check("/dev/kvm", ok, "boot-check uses KVM" if ok else
                 "not usable: boot-check emulates (TCG), several times slower", optional=True)


def _profiles(dirs: list[Path]) -> Check:
    try:
        loaded = profiles.load_all(dirs)
    except ImgpipeError as exc:
        return Check("profiles", False, str(exc))
    return Check("profiles", True, f"{len(loaded)} valid: {', '.join(sorted(loaded))}")
