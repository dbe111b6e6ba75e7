"""os-release and Windows version -> os_distro, os_version and vmware_ostype, table by table.

The os-release texts are the files the distributions ship; every guestId the tables can produce must be
a value of vSphere's GuestOsIdentifier enumeration, copied below.
"""

from __future__ import annotations

import shlex

import pytest

from imgpipe import profiles
from imgpipe.guest.facts import Fact, GuestFacts
from imgpipe.guest.policy import derive, osinfo

# vim.vm.GuestOsDescriptor.GuestOsIdentifier, all values, copied from pyvmomi's pyVmomi/_typeinfo_vim.py
# (CreateEnumType "vim.vm.GuestOsDescriptor.GuestOsIdentifier") at vmware/pyvmomi commit
# debb05118666d07ce38b2527151f738f4fac673e (after v8.0.3.0.1). It has no arm64 guest ids.
GUEST_OS_IDENTIFIERS = frozenset({
    "dosGuest", "win31Guest", "win95Guest", "win98Guest", "winMeGuest", "winNTGuest", "win2000ProGuest",
    "win2000ServGuest", "win2000AdvServGuest", "winXPHomeGuest", "winXPProGuest", "winXPPro64Guest",
    "winNetWebGuest", "winNetStandardGuest", "winNetEnterpriseGuest", "winNetDatacenterGuest",
    "winNetBusinessGuest", "winNetStandard64Guest", "winNetEnterprise64Guest", "winLonghornGuest",
    "winLonghorn64Guest", "winNetDatacenter64Guest", "winVistaGuest", "winVista64Guest", "windows7Guest",
    "windows7_64Guest", "windows7Server64Guest", "windows8Guest", "windows8_64Guest", "windows8Server64Guest",
    "windows9Guest", "windows9_64Guest", "windows9Server64Guest", "windows11_64Guest", "windows12_64Guest",
    "windowsHyperVGuest", "windows2019srv_64Guest", "windows2019srvNext_64Guest", "windows2022srvNext_64Guest",
    "freebsdGuest", "freebsd64Guest", "freebsd11Guest", "freebsd11_64Guest", "freebsd12Guest",
    "freebsd12_64Guest", "freebsd13Guest", "freebsd13_64Guest", "freebsd14Guest", "freebsd14_64Guest",
    "freebsd15Guest", "freebsd15_64Guest", "redhatGuest", "rhel2Guest", "rhel3Guest", "rhel3_64Guest",
    "rhel4Guest", "rhel4_64Guest", "rhel5Guest", "rhel5_64Guest", "rhel6Guest", "rhel6_64Guest", "rhel7Guest",
    "rhel7_64Guest", "rhel8_64Guest", "rhel9_64Guest", "rhel10_64Guest", "centosGuest", "centos64Guest",
    "centos6Guest", "centos6_64Guest", "centos7Guest", "centos7_64Guest", "centos8_64Guest", "centos9_64Guest",
    "oracleLinuxGuest", "oracleLinux64Guest", "oracleLinux6Guest", "oracleLinux6_64Guest", "oracleLinux7Guest",
    "oracleLinux7_64Guest", "oracleLinux8_64Guest", "oracleLinux9_64Guest", "oracleLinux10_64Guest",
    "suseGuest", "suse64Guest", "slesGuest", "sles64Guest", "sles10Guest", "sles10_64Guest", "sles11Guest",
    "sles11_64Guest", "sles12Guest", "sles12_64Guest", "sles15_64Guest", "sles16_64Guest", "nld9Guest",
    "oesGuest", "sjdsGuest", "mandrakeGuest", "mandrivaGuest", "mandriva64Guest", "turboLinuxGuest",
    "turboLinux64Guest", "ubuntuGuest", "ubuntu64Guest", "debian4Guest", "debian4_64Guest", "debian5Guest",
    "debian5_64Guest", "debian6Guest", "debian6_64Guest", "debian7Guest", "debian7_64Guest", "debian8Guest",
    "debian8_64Guest", "debian9Guest", "debian9_64Guest", "debian10Guest", "debian10_64Guest", "debian11Guest",
    "debian11_64Guest", "debian12Guest", "debian12_64Guest", "debian13Guest", "debian13_64Guest",
    "asianux3Guest", "asianux3_64Guest", "asianux4Guest", "asianux4_64Guest", "asianux5_64Guest",
    "asianux7_64Guest", "asianux8_64Guest", "asianux9_64Guest", "opensuseGuest", "opensuse64Guest",
    "fedoraGuest", "fedora64Guest", "coreos64Guest", "vmwarePhoton64Guest", "other24xLinuxGuest",
    "other26xLinuxGuest", "otherLinuxGuest", "other3xLinuxGuest", "other4xLinuxGuest", "other5xLinuxGuest",
    "other6xLinuxGuest", "other7xLinuxGuest", "genericLinuxGuest", "other24xLinux64Guest",
    "other26xLinux64Guest", "other3xLinux64Guest", "other4xLinux64Guest", "other5xLinux64Guest",
    "other6xLinux64Guest", "other7xLinux64Guest", "otherLinux64Guest", "solaris6Guest", "solaris7Guest",
    "solaris8Guest", "solaris9Guest", "solaris10Guest", "solaris10_64Guest", "solaris11_64Guest", "os2Guest",
    "eComStationGuest", "eComStation2Guest", "netware4Guest", "netware5Guest", "netware6Guest",
    "openServer5Guest", "openServer6Guest", "unixWare7Guest", "darwinGuest", "darwin64Guest", "darwin10Guest",
    "darwin10_64Guest", "darwin11Guest", "darwin11_64Guest", "darwin12_64Guest", "darwin13_64Guest",
    "darwin14_64Guest", "darwin15_64Guest", "darwin16_64Guest", "darwin17_64Guest", "darwin18_64Guest",
    "darwin19_64Guest", "darwin20_64Guest", "darwin21_64Guest", "darwin22_64Guest", "darwin23_64Guest",
    "vmkernelGuest", "vmkernel5Guest", "vmkernel6Guest", "vmkernel65Guest", "vmkernel7Guest", "vmkernel8Guest",
    "amazonlinux2_64Guest", "amazonlinux3_64Guest", "crxPod1Guest", "crxSys1Guest", "rockylinux_64Guest",
    "almalinux_64Guest", "otherGuest", "otherGuest64"
})

UBUNTU_2404 = """PRETTY_NAME="Ubuntu 24.04 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME=noble
LOGO=ubuntu-logo
"""
DEBIAN_12 = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""
DEBIAN_13 = DEBIAN_12.replace("12 (bookworm)", "13 (trixie)").replace('"12"', '"13"').replace("bookworm", "trixie")
DEBIAN_SID = """PRETTY_NAME="Debian GNU/Linux trixie/sid"
NAME="Debian GNU/Linux"
VERSION_CODENAME=trixie
ID=debian
HOME_URL="https://www.debian.org/"
"""
ROCKY_94 = """NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"
ANSI_COLOR="0;32"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:rocky:rocky:9::baseos"
HOME_URL="https://rockylinux.org/"
BUG_REPORT_URL="https://bugs.rockylinux.org/"
SUPPORT_END="2032-05-31"
ROCKY_SUPPORT_PRODUCT="Rocky-Linux-9"
ROCKY_SUPPORT_PRODUCT_VERSION="9.4"
REDHAT_SUPPORT_PRODUCT="Rocky Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
"""
ALMA_94 = """NAME="AlmaLinux"
VERSION="9.4 (Seafoam Ocelot)"
ID="almalinux"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"
ANSI_COLOR="0;34"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:almalinux:almalinux:9::baseos"
HOME_URL="https://almalinux.org/"
DOCUMENTATION_URL="https://wiki.almalinux.org/"
BUG_REPORT_URL="https://bugs.almalinux.org/"
ALMALINUX_MANTISBT_PROJECT="AlmaLinux-9"
ALMALINUX_MANTISBT_PROJECT_VERSION="9.4"
REDHAT_SUPPORT_PRODUCT="AlmaLinux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
SUPPORT_END=2032-06-01
"""
RHEL_94 = """NAME="Red Hat Enterprise Linux"
VERSION="9.4 (Plow)"
ID="rhel"
ID_LIKE="fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"
ANSI_COLOR="0;31"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:redhat:enterprise_linux:9::baseos"
HOME_URL="https://www.redhat.com/"
DOCUMENTATION_URL="https://access.redhat.com/documentation/en-us/red_hat_enterprise_linux/9"
BUG_REPORT_URL="https://bugzilla.redhat.com/"
REDHAT_BUGZILLA_PRODUCT="Red Hat Enterprise Linux 9"
REDHAT_BUGZILLA_PRODUCT_VERSION=9.4
REDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
"""
CENTOS_STREAM_9 = """NAME="CentOS Stream"
VERSION="9"
ID="centos"
ID_LIKE="rhel fedora"
VERSION_ID="9"
PLATFORM_ID="platform:el9"
PRETTY_NAME="CentOS Stream 9"
ANSI_COLOR="0;31"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:centos:centos:9"
HOME_URL="https://centos.org/"
BUG_REPORT_URL="https://issues.redhat.com/"
REDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux 9"
REDHAT_SUPPORT_PRODUCT_VERSION="CentOS Stream"
"""
CENTOS_7 = """NAME="CentOS Linux"
VERSION="7 (Core)"
ID="centos"
ID_LIKE="rhel fedora"
VERSION_ID="7"
PRETTY_NAME="CentOS Linux 7 (Core)"
ANSI_COLOR="0;31"
CPE_NAME="cpe:/o:centos:centos:7"
HOME_URL="https://www.centos.org/"
BUG_REPORT_URL="https://bugs.centos.org/"
"""
FEDORA_40 = """NAME="Fedora Linux"
VERSION="40 (Cloud Edition)"
ID=fedora
VERSION_ID=40
VERSION_CODENAME=""
PLATFORM_ID="platform:f40"
PRETTY_NAME="Fedora Linux 40 (Cloud Edition)"
ANSI_COLOR="0;38;2;60;110;180"
LOGO=fedora-logo-icon
CPE_NAME="cpe:/o:fedoraproject:fedora:40"
DEFAULT_HOSTNAME="fedora"
HOME_URL="https://fedoraproject.org/"
SUPPORT_URL="https://ask.fedoraproject.org/"
BUG_REPORT_URL="https://bugzilla.redhat.com/"
REDHAT_BUGZILLA_PRODUCT="Fedora"
REDHAT_BUGZILLA_PRODUCT_VERSION=40
REDHAT_SUPPORT_PRODUCT="Fedora"
REDHAT_SUPPORT_PRODUCT_VERSION=40
SUPPORT_END=2025-05-13
VARIANT="Cloud Edition"
VARIANT_ID=cloud
"""
LEAP_155 = """NAME="openSUSE Leap"
VERSION="15.5"
ID="opensuse-leap"
ID_LIKE="suse opensuse"
VERSION_ID="15.5"
PRETTY_NAME="openSUSE Leap 15.5"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:opensuse:leap:15.5"
BUG_REPORT_URL="https://bugs.opensuse.org"
HOME_URL="https://www.opensuse.org/"
DOCUMENTATION_URL="https://en.opensuse.org/Portal:Leap"
LOGO="distributor-logo-Leap"
"""
TUMBLEWEED = """NAME="openSUSE Tumbleweed"
# VERSION="20240612"
ID="opensuse-tumbleweed"
ID_LIKE="opensuse suse"
VERSION_ID="20240612"
PRETTY_NAME="openSUSE Tumbleweed"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:opensuse:tumbleweed:20240612"
BUG_REPORT_URL="https://bugzilla.opensuse.org"
SUPPORT_URL="https://bugs.opensuse.org"
HOME_URL="https://www.opensuse.org"
DOCUMENTATION_URL="https://en.opensuse.org/Portal:Tumbleweed"
LOGO="distributor-logo-Tumbleweed"
"""
MICROOS = TUMBLEWEED.replace("openSUSE Tumbleweed", "openSUSE MicroOS").replace("opensuse-tumbleweed", "opensuse-microos")
SLES_15_SP5 = """NAME="SLES"
VERSION="15-SP5"
VERSION_ID="15.5"
PRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"
ID="sles"
ID_LIKE="suse"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:suse:sles:15:sp5"
DOCUMENTATION_URL="https://documentation.suse.com/"
"""
ARCH = """NAME="Arch Linux"
PRETTY_NAME="Arch Linux"
ID=arch
BUILD_ID=rolling
ANSI_COLOR="38;2;23;147;209"
HOME_URL="https://archlinux.org/"
DOCUMENTATION_URL="https://wiki.archlinux.org/"
SUPPORT_URL="https://bbs.archlinux.org/"
BUG_REPORT_URL="https://gitlab.archlinux.org/groups/archlinux/-/issues"
PRIVACY_POLICY_URL="https://terms.archlinux.org/docs/privacy-policy/"
LOGO=archlinux-logo
"""
ALPINE_320 = """NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.20.0
PRETTY_NAME="Alpine Linux v3.20"
HOME_URL="https://alpinelinux.org/"
BUG_REPORT_URL="https://gitlab.alpinelinux.org/alpine/aports/-/issues"
"""
ORACLE_94 = """NAME="Oracle Linux Server"
VERSION="9.4"
ID="ol"
ID_LIKE="fedora"
VARIANT="Server"
VARIANT_ID="server"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Oracle Linux Server 9.4"
ANSI_COLOR="0;31"
CPE_NAME="cpe:/o:oracle:linux:9:4:server"
HOME_URL="https://linux.oracle.com/"
BUG_REPORT_URL="https://github.com/oracle/oracle-linux"
"""
LINUX_MINT_213 = """NAME="Linux Mint"
VERSION="21.3 (Virginia)"
ID=linuxmint
ID_LIKE="ubuntu debian"
PRETTY_NAME="Linux Mint 21.3"
VERSION_ID="21.3"
VERSION_CODENAME=virginia
UBUNTU_CODENAME=jammy
"""
UNKNOWN_RHEL_LIKE = """NAME="Example Enterprise Linux"
ID="exampleel"
ID_LIKE="rhel fedora"
VERSION_ID="9.4"
PRETTY_NAME="Example Enterprise Linux 9.4"
"""
NIXOS = """NAME=NixOS
ID=nixos
VERSION_ID="24.05"
PRETTY_NAME="NixOS 24.05 (Uakari)"
"""


def parse(text: str) -> dict[str, str]:
    """os-release as its spec reads it: KEY=value lines, shell quoting, # comments."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            words = shlex.split(value)
            fields[key] = words[0] if words else ""
    return fields


CASES = [  # (name, os-release, os_distro, os_version, vmware_ostype)
    ("ubuntu-24.04", UBUNTU_2404, "ubuntu", "24.04", "ubuntu64Guest"),
    ("debian-12", DEBIAN_12, "debian", "12", "debian12_64Guest"),
    ("debian-13", DEBIAN_13, "debian", "13", "debian13_64Guest"),
    ("debian-sid", DEBIAN_SID, "debian", None, "otherLinux64Guest"),
    ("rocky-9.4", ROCKY_94, "rocky", "9.4", "rockylinux_64Guest"),
    ("almalinux-9.4", ALMA_94, "almalinux", "9.4", "almalinux_64Guest"),
    ("rhel-9.4", RHEL_94, "rhel", "9.4", "rhel9_64Guest"),
    ("rhel-10.0", RHEL_94.replace("9.4", "10.0"), "rhel", "10.0", "rhel10_64Guest"),
    ("rhel-11.0", RHEL_94.replace("9.4", "11.0"), "rhel", "11.0", "otherLinux64Guest"),
    ("centos-stream-9", CENTOS_STREAM_9, "centos", "9", "centos9_64Guest"),
    ("centos-7", CENTOS_7, "centos", "7", "centos7_64Guest"),
    ("fedora-40", FEDORA_40, "fedora", "40", "fedora64Guest"),
    ("opensuse-leap-15.5", LEAP_155, "opensuse", "15.5", "opensuse64Guest"),
    ("opensuse-tumbleweed", TUMBLEWEED, "opensuse", "20240612", "opensuse64Guest"),
    ("opensuse-microos", MICROOS, "opensuse", "20240612", "opensuse64Guest"),
    ("sles-15-sp5", SLES_15_SP5, "sled", "15.5", "sles15_64Guest"),
    ("arch", ARCH, "arch", None, "otherLinux64Guest"),
    ("alpine-3.20", ALPINE_320, "alpinelinux", "3.20.0", "otherLinux64Guest"),
    ("oracle-9.4", ORACLE_94, "oraclelinux", "9.4", "oracleLinux9_64Guest"),
    # A derivative's VERSION_ID is its own, not its base's: no os_version, no versioned guestId.
    ("unknown-rhel-like", UNKNOWN_RHEL_LIKE, "rhel", None, "otherLinux64Guest"),
    ("linuxmint-21.3", LINUX_MINT_213, "ubuntu", None, "ubuntu64Guest"),
    ("nixos", NIXOS, None, None, "otherLinux64Guest"),
]


@pytest.mark.parametrize(("text", "distro", "version", "guest_id"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_os_release_table(text: str, distro: str | None, version: str | None, guest_id: str) -> None:
    release = parse(text)
    got_distro, got_version = osinfo.os_distro(release), osinfo.os_version(release)
    assert (got_distro.value if got_distro else None) == distro
    assert (got_version.value if got_version else None) == version
    assert osinfo.vmware_guest_id(release).value == guest_id


def test_why_names_the_fields_used() -> None:
    assert osinfo.os_distro(parse(ROCKY_94)) == osinfo.Derived("rocky", "ID=rocky")
    assert osinfo.os_version(parse(ROCKY_94)) == osinfo.Derived("9.4", "VERSION_ID")
    assert osinfo.vmware_guest_id(parse(RHEL_94)).why == "ID=rhel VERSION_ID=9.4"
    like = osinfo.os_distro(parse(UNKNOWN_RHEL_LIKE))
    assert like == osinfo.Derived("rhel", "ID=exampleel not known, ID_LIKE=rhel fedora: rhel")
    assert "no guestId of its own" in osinfo.vmware_guest_id(parse(RHEL_94.replace("9.4", "11.0"))).why


def test_id_like_order_decides() -> None:
    """ID_LIKE lists the closest relative first; a later entry the table knows must not win."""
    assert osinfo.os_distro({"ID": "x", "ID_LIKE": "centos rhel fedora"}).value == "centos"  # type: ignore[union-attr]
    assert osinfo.os_distro({"ID": "x", "ID_LIKE": "notknown fedora"}).value == "fedora"  # type: ignore[union-attr]
    assert osinfo.vmware_guest_id({"ID": "x", "ID_LIKE": "fedora"}).value == "fedora64Guest"


def test_kernel_narrows_only_the_generic_linux_id() -> None:
    arch = parse(ARCH)
    assert osinfo.vmware_guest_id(arch, kernel="6.9.7-arch1-1") == osinfo.Derived(
        "other6xLinux64Guest", "ID=arch; kernel 6.9.7-arch1-1")
    assert osinfo.vmware_guest_id(parse(NIXOS), kernel="5.15.0").value == "other5xLinux64Guest"
    assert osinfo.vmware_guest_id(arch, kernel="2.6.32").value == "otherLinux64Guest"
    assert osinfo.vmware_guest_id(parse(DEBIAN_12), kernel="6.1.0-18-amd64").value == "debian12_64Guest"
    assert osinfo.vmware_guest_id({"ID": "freebsd", "VERSION_ID": "16.0"}, kernel="6.1").value == "freebsd64Guest"


@pytest.mark.parametrize("version_id", ["9.4 beta", "x" * 65, "9.4$(id)", ""])
def test_odd_version_id_gives_no_version(version_id: str) -> None:
    release = {"ID": "rhel", "VERSION_ID": version_id}
    assert osinfo.os_distro(release) == osinfo.Derived("rhel", "ID=rhel")
    assert osinfo.os_version(release) is None
    assert osinfo.vmware_guest_id(release).value == "otherLinux64Guest"


WINDOWS_CASES = [  # (name, CurrentVersion values, os_version, vmware_ostype)
    ("server-2016", {"ProductName": "Windows Server 2016 Datacenter", "EditionID": "ServerDatacenter",
                     "InstallationType": "Server", "CurrentBuildNumber": "14393",
                     "CurrentMajorVersionNumber": 10, "CurrentMinorVersionNumber": 0}, "10", "windows9Server64Guest"),
    ("server-2019-core", {"ProductName": "Windows Server 2019 Standard", "EditionID": "ServerStandard",
                          "InstallationType": "Server Core", "CurrentBuildNumber": "17763",
                          "CurrentMajorVersionNumber": 10, "CurrentMinorVersionNumber": 0}, "10", "windows2019srv_64Guest"),
    ("server-2022", {"ProductName": "Windows Server 2022 Datacenter", "EditionID": "ServerDatacenter",
                     "InstallationType": "Server", "CurrentBuildNumber": "20348",
                     "CurrentMajorVersionNumber": "10", "CurrentMinorVersionNumber": "0"}, "10",
     "windows2019srvNext_64Guest"),
    ("server-23h2", {"ProductName": "Windows Server Datacenter", "EditionID": "ServerDatacenterACor",
                     "InstallationType": "Server Core", "CurrentBuildNumber": "25398",
                     "CurrentMajorVersionNumber": 10, "CurrentMinorVersionNumber": 0}, "10", "windows2019srvNext_64Guest"),
    ("server-2025", {"ProductName": "Windows Server 2025 Datacenter", "EditionID": "ServerDatacenter",
                     "InstallationType": "Server", "CurrentBuildNumber": 26100,
                     "CurrentMajorVersionNumber": 10, "CurrentMinorVersionNumber": 0}, "10", "windows2022srvNext_64Guest"),
    ("server-2012-r2", {"ProductName": "Windows Server 2012 R2 Standard", "EditionID": "ServerStandard",
                        "InstallationType": "Server", "CurrentBuildNumber": "9600"}, None, "windows8Server64Guest"),
    ("windows-10", {"ProductName": "Windows 10 Pro", "EditionID": "Professional", "InstallationType": "Client",
                    "CurrentBuildNumber": "19045", "CurrentMajorVersionNumber": 10, "CurrentMinorVersionNumber": 0},
     "10", "windows9_64Guest"),
    # Windows 11 keeps ProductName "Windows 10 ...": only the build number tells.
    ("windows-11", {"ProductName": "Windows 10 Pro", "EditionID": "Professional", "InstallationType": "Client",
                    "CurrentBuildNumber": "22631", "CurrentMajorVersionNumber": 10, "CurrentMinorVersionNumber": 0},
     "10", "windows11_64Guest"),
    ("windows-8.1", {"ProductName": "Windows 8.1 Pro", "EditionID": "Professional", "InstallationType": "Client",
                     "CurrentBuildNumber": "9600", "CurrentMajorVersionNumber": 6, "CurrentMinorVersionNumber": 3},
     "6.3", "windows8_64Guest"),
    ("no-installation-type", {"EditionID": "ServerStandard", "CurrentBuildNumber": "20348"}, None,
     "windows2019srvNext_64Guest"),
    ("unreadable-build", {"InstallationType": "Server", "CurrentBuildNumber": "twenty",
                          "CurrentMajorVersionNumber": True, "CurrentMinorVersionNumber": 0}, None,
     osinfo.WINDOWS_VMWARE),
    ("huge-numbers", {"InstallationType": "Client", "CurrentBuildNumber": "9" * 5000,
                      "CurrentMajorVersionNumber": 1 << 40, "CurrentMinorVersionNumber": -1}, None, "windows9_64Guest"),
]


@pytest.mark.parametrize(("values", "version", "guest_id"), [c[1:] for c in WINDOWS_CASES],
                         ids=[c[0] for c in WINDOWS_CASES])
def test_windows_build_table(values: dict[str, object], version: str | None, guest_id: str) -> None:
    assert osinfo.windows_properties(values) == (version, guest_id)


def _every_table_value() -> set[str]:
    """Every guestId the tables hold, and every one the functions return over a sweep of inputs."""
    ids = {osinfo.LINUX_FALLBACK, osinfo.WINDOWS_VMWARE, *osinfo.KERNEL_GUEST_IDS.values()}
    for distro in osinfo.DISTROS.values():
        ids |= {distro.fallback, *(distro.guest_id.format(major=m) for m in distro.majors)}
        if "{major}" not in distro.guest_id:
            ids.add(distro.guest_id)
    ids |= {guest_id for _, guest_id in osinfo.WINDOWS_SERVER + osinfo.WINDOWS_CLIENT}
    for os_id in [*osinfo.DISTROS, "unknown"]:
        for major in range(40):
            for kernel in ("", "2.6.32", "3.10.0", "4.18.0", "5.14.0", "6.8.0", "7.0.0", "8.1.0"):
                ids.add(osinfo.vmware_guest_id({"ID": os_id, "VERSION_ID": f"{major}.1"}, kernel).value)
    for build in range(0, 40000, 50):
        for kind in ("Client", "Server", "Server Core", ""):
            ids.add(osinfo.windows_properties({"InstallationType": kind, "CurrentBuildNumber": str(build)})[1])
    return ids


def test_every_guest_id_is_in_vsphere_enumeration() -> None:
    produced = _every_table_value()
    assert produced - GUEST_OS_IDENTIFIERS == set()
    assert len(produced) > 40
    # Names seen in the wild that the enumeration does not have: the check must be able to fail.
    assert not {"windows2025srv_64Guest", "rhel11_64Guest", "centos10_64Guest", "ubuntu", "arm64Debian12"} \
        & GUEST_OS_IDENTIFIERS


def test_os_distro_vocabulary() -> None:
    """Glance's useful-image-properties names, plus libguestfs' rocky/almalinux/oraclelinux/alpinelinux."""
    glance = {"arch", "centos", "debian", "fedora", "freebsd", "gentoo", "mandrake", "mandriva", "mes", "msdos",
              "netbsd", "netware", "openbsd", "opensolaris", "opensuse", "rhel", "sled", "ubuntu", "windows"}
    libguestfs_only = {"rocky", "almalinux", "oraclelinux", "alpinelinux"}
    assert {d.os_distro for d in osinfo.DISTROS.values()} <= glance | libguestfs_only


def _facts(text: str) -> GuestFacts:
    return GuestFacts(architecture=Fact("x86_64", "/dev/sda1 /usr/bin/ls"), os_type=Fact("linux", "os-release"),
                      os_release=Fact(parse(text), "partition 1 /etc/os-release"))


def test_derive_uses_the_vocabulary_per_hypervisor() -> None:
    available = profiles.load_all()
    kvm = derive.to_dict(derive.properties(_facts(ROCKY_94), available["kvm"]))
    assert kvm["os_distro"] == {"value": "rocky", "evidence": "partition 1 /etc/os-release (ID=rocky)"}
    assert kvm["os_version"] == {"value": "9.4", "evidence": "partition 1 /etc/os-release (VERSION_ID)"}
    vmware = derive.to_dict(derive.properties(_facts(ROCKY_94), available["vmware"]))
    assert vmware["vmware_ostype"]["value"] == "rockylinux_64Guest" and "os_distro" not in vmware
    assert not {"os_distro", "os_version"} & set(vmware)


def test_derive_id_like_has_no_version() -> None:
    props = derive.properties(_facts(UNKNOWN_RHEL_LIKE), profiles.load_all()["kvm"])
    assert props["os_distro"] == Fact("rhel", "partition 1 /etc/os-release (ID=exampleel not known, "
                                              "ID_LIKE=rhel fedora: rhel)")
    assert "os_version" not in props


def test_derive_unknown_distribution() -> None:
    available = profiles.load_all()
    assert not {"os_distro", "os_version"} & set(derive.properties(_facts(NIXOS), available["kvm"]))
    assert derive.properties(_facts(NIXOS), available["vmware"])["vmware_ostype"].value == "otherLinux64Guest"
