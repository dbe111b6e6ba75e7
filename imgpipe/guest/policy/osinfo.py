"""os-release and Windows version -> OpenStack's os_distro/os_version and vSphere's guestId.

os_distro is the bare distribution name of Glance's useful-image-properties list (what
virt-v2v's OpenStack output writes: libguestfs names, archlinux->arch, sles->sled); os_version is
the distributor's own VERSION_ID. vmware_ostype values all come from vSphere's
GuestOsIdentifier enumeration, which has no arm64 ids: the table is for x86_64 guests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

LINUX_FALLBACK = "otherLinux64Guest"
# otherNxLinux64Guest exists for these kernel major versions.
KERNEL_GUEST_IDS = {"3": "other3xLinux64Guest", "4": "other4xLinux64Guest", "5": "other5xLinux64Guest",
                    "6": "other6xLinux64Guest", "7": "other7xLinux64Guest"}
# What derive sets for a Windows guest whose version was not read.
WINDOWS_VMWARE = "windows2019srv_64Guest"
_VERSION_ID = re.compile(r"[0-9A-Za-z._~-]{1,64}")


@dataclass(frozen=True)
class Distro:
    """One distribution: its os_distro and the guestId, versioned by major where vSphere has one."""

    os_distro: str
    guest_id: str  # a guestId, or a template with {major}
    majors: frozenset[str] = frozenset()  # majors the template has a guestId for
    fallback: str = LINUX_FALLBACK  # the guestId for any other major


def _versioned(os_distro: str, template: str, majors: str, fallback: str = LINUX_FALLBACK) -> Distro:
    return Distro(os_distro, template, frozenset(majors.split()), fallback)


_OPENSUSE = Distro("opensuse", "opensuse64Guest")
_SUSE_ENTERPRISE = _versioned("sled", "sles{major}_64Guest", "12 15 16")
# Keyed by os-release ID; ID_LIKE entries are looked up here too when the ID is not.
DISTROS: dict[str, Distro] = {
    "ubuntu": Distro("ubuntu", "ubuntu64Guest"),
    "debian": _versioned("debian", "debian{major}_64Guest", "8 9 10 11 12 13"),
    "rhel": _versioned("rhel", "rhel{major}_64Guest", "7 8 9 10"),
    "centos": _versioned("centos", "centos{major}_64Guest", "7 8 9"),  # CentOS Linux and CentOS Stream
    "rocky": Distro("rocky", "rockylinux_64Guest"),
    "almalinux": Distro("almalinux", "almalinux_64Guest"),
    "ol": _versioned("oraclelinux", "oracleLinux{major}_64Guest", "7 8 9 10"),
    "fedora": Distro("fedora", "fedora64Guest"),
    "opensuse": _OPENSUSE,
    "opensuse-leap": _OPENSUSE,
    "opensuse-tumbleweed": _OPENSUSE,
    "opensuse-slowroll": _OPENSUSE,
    "opensuse-microos": _OPENSUSE,
    "sles": _SUSE_ENTERPRISE,
    "sled": _SUSE_ENTERPRISE,
    "arch": Distro("arch", LINUX_FALLBACK),
    "gentoo": Distro("gentoo", LINUX_FALLBACK),
    "alpine": Distro("alpinelinux", LINUX_FALLBACK),
    "freebsd": _versioned("freebsd", "freebsd{major}_64Guest", "11 12 13 14 15", fallback="freebsd64Guest"),
}

# (lowest CurrentBuildNumber, guestId), newest first: the first entry at or below the build wins.
WINDOWS_SERVER: tuple[tuple[int, str], ...] = (
    (26100, "windows2022srvNext_64Guest"),  # Server 2025
    (20348, "windows2019srvNext_64Guest"),  # Server 2022
    (17763, "windows2019srv_64Guest"),  # Server 2019
    (14393, "windows9Server64Guest"),  # Server 2016
    (9200, "windows8Server64Guest"),  # Server 2012, 2012 R2
    (0, "windows7Server64Guest"),  # Server 2008 R2 and older
)
WINDOWS_11_BUILD = 22000
WINDOWS_CLIENT: tuple[tuple[int, str], ...] = (
    (WINDOWS_11_BUILD, "windows11_64Guest"),
    (10240, "windows9_64Guest"),  # Windows 10
    (9200, "windows8_64Guest"),  # Windows 8, 8.1
    (0, "windows7_64Guest"),
)


@dataclass(frozen=True)
class Derived:
    """A derived value and which fields chose it, for the evidence a user checks."""

    value: str
    why: str


@dataclass(frozen=True)
class _Match:
    distro: Distro
    why: str
    exact: bool  # matched by ID: VERSION_ID is this distribution's version


def _match(release: Mapping[str, str]) -> _Match | None:
    os_id = release.get("ID", "").strip().lower()
    if os_id in DISTROS:
        return _Match(DISTROS[os_id], f"ID={os_id}", True)
    like = release.get("ID_LIKE", "").lower().split()
    for name in like:
        if name in DISTROS:
            return _Match(DISTROS[name], f"ID={os_id or '?'} not known, ID_LIKE={' '.join(like)}: {name}", False)
    return None


def _version_id(release: Mapping[str, str]) -> str | None:
    version = release.get("VERSION_ID", "").strip()
    return version if _VERSION_ID.fullmatch(version) else None


def os_distro(release: Mapping[str, str]) -> Derived | None:
    """os_distro from ID, else from the first ID_LIKE entry the table knows; None if neither."""
    match = _match(release)
    return Derived(match.distro.os_distro, match.why) if match else None


def os_version(release: Mapping[str, str]) -> Derived | None:
    """VERSION_ID as written, only when ID itself was known: a derivative's version is not its base's."""
    match, version = _match(release), _version_id(release)
    if match is None or not match.exact or version is None:
        return None
    return Derived(version, "VERSION_ID")


def vmware_guest_id(release: Mapping[str, str], kernel: str = "") -> Derived:
    """guestId for the distribution and major version; otherwise by the kernel's major, else the fallback."""
    match, version = _match(release), _version_id(release) or ""
    major = version.split(".")[0]
    shown = f"VERSION_ID={version or '?'}"
    if match is None:
        return _by_kernel(LINUX_FALLBACK, kernel, f"ID={release.get('ID', '') or '?'} not known")
    distro = match.distro
    if "{major}" not in distro.guest_id:
        return _by_kernel(distro.guest_id, kernel, match.why)
    if match.exact and major in distro.majors:
        return Derived(distro.guest_id.format(major=major), f"{match.why} {shown}")
    reason = f"{match.why} {shown}: no guestId of its own" if match.exact else f"{match.why}, version unknown"
    return _by_kernel(distro.fallback, kernel, reason)


def _by_kernel(guest_id: str, kernel: str, why: str) -> Derived:
    """Generic Linux ids narrowed by kernel major version (otherNxLinux64Guest) when it is known."""
    major = kernel.split(".")[0]
    if guest_id == LINUX_FALLBACK and major in KERNEL_GUEST_IDS:
        return Derived(KERNEL_GUEST_IDS[major], f"{why}; kernel {kernel}")
    return Derived(guest_id, why)


def _number(value: object) -> int | None:
    """A registry DWORD or decimal string; None for anything else (hostile hives included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 1 << 32 else None
    text = str(value).strip() if isinstance(value, str) else ""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


def windows_properties(version: Mapping[str, object]) -> tuple[str | None, str]:
    """(os_version, vmware_ostype) from SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion values.

    os_version is what virt-v2v writes (libguestfs' major.minor, ".0" dropped: "10" for Windows
    10/11 and Server 2016-2025, "6.3" for 8.1/2012 R2). The guestId needs the build number, since
    ProductName says "Windows 10" on Windows 11; InstallationType tells Server from Client.
    """
    major, minor = _number(version.get("CurrentMajorVersionNumber")), _number(version.get("CurrentMinorVersionNumber"))
    os_ver = None if major is None else str(major) if not minor else f"{major}.{minor}"
    kind = next((str(version[k]) for k in ("InstallationType", "EditionID", "ProductName")
                 if isinstance(version.get(k), str) and version[k]), "")
    server = "server" in kind.lower()
    build = _number(version.get("CurrentBuildNumber"))
    if build is None:
        return os_ver, WINDOWS_VMWARE if server else "windows9_64Guest"
    table = WINDOWS_SERVER if server else WINDOWS_CLIENT
    return os_ver, next(guest_id for lowest, guest_id in table if build >= lowest)
