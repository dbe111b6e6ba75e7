"""cloud-init inspection on real ext4 filesystems (mkfs.ext4 -d), read through ExtBlocks."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imgpipe.guest.cloudinit import CloudInit, read_cloud_init
from imgpipe.guest.facts import Fact
from imgpipe.guest.fs.ext import ExtBlocks
from imgpipe.guest.policy.metadata import Outcome, cloudbase_verdict, verdict

DEBIAN_CFG = """\
users:
  - default
disable_root: true
system_info:
  distro: debian
  default_user:
    name: debian
    groups: [adm, sudo]
  paths:
    cloud_dir: /var/lib/cloud/
"""


def _guest(root: Path, files: dict[str, str | bytes]) -> Path:
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


# Debian's stock 05_logging.cfg shares its handler text through anchors and aliases like these.
LOGGING_CFG = """\
_log:
 - &log_base |
   [loggers]
   keys=root
 - &log_file |
   [handler_cloudLogHandler]
   class=FileHandler
log_cfgs:
 - [ *log_base, *log_file ]
"""


def _installed(extra: dict[str, str | bytes] | None = None) -> dict[str, str | bytes]:
    return {"/usr/bin/cloud-init": "#!/usr/bin/python3\n",
            "/etc/cloud/cloud.cfg.d/05_logging.cfg": LOGGING_CFG,
            "/usr/lib/python3/dist-packages/cloudinit/version.py": '__VERSION__ = "24.1.3"\n_PACKAGED_VERSION = "x"\n',
            "/etc/cloud/cloud.cfg": DEBIAN_CFG} | (extra or {})


@contextmanager
def _ext4(tmp: Path, files: dict[str, str | bytes], name: str = "root", size: str = "32M") -> Iterator[ExtBlocks]:
    tree = _guest(tmp / f"{name}-tree", files)
    raw = tmp / f"{name}.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(raw), size], check=True)
    fd = os.open(raw, os.O_RDONLY)
    try:
        yield ExtBlocks(lambda off, n: os.pread(fd, n, off), raw.stat().st_size, name)
    finally:
        os.close(fd)


def _read(tmp: Path, files: dict[str, str | bytes], size: str = "32M") -> CloudInit:
    with _ext4(tmp, files, size=size) as root:
        return read_cloud_init(root, "root")


def test_no_cloud_init_is_a_warning(tmp_path: Path) -> None:
    ci = _read(tmp_path, {"/etc/os-release": "ID=debian\n"})
    assert ci.installed is None and ci.version is None and ci.disabled is None
    outcome = verdict(ci, "kvm")
    assert outcome.refusal is None and not outcome.derived
    assert outcome.warning and "no cloud-init" in outcome.warning


def test_stock_configuration_probes_the_default_list(tmp_path: Path) -> None:
    ci = _read(tmp_path, _installed())
    assert ci.installed is not None and "/usr/bin/cloud-init" in ci.installed.evidence
    assert "/usr/lib/python3/dist-packages/cloudinit" in ci.installed.evidence
    assert ci.version == Fact("24.1.3", "root /usr/lib/python3/dist-packages/cloudinit/version.py (__VERSION__)")
    assert ci.datasource_list is not None and ci.datasource_list.value is None
    assert "built-in" in ci.datasource_list.evidence
    assert ci.default_user == Fact("debian", "root /etc/cloud/cloud.cfg (system_info.default_user.name)")
    assert ci.disabled is None and not ci.notes and not ci.unread
    for target in ("kvm", "qemu", "ironic", "hyperv", "vmware", "lxc"):
        assert verdict(ci, target).refusal is None
        assert not verdict(ci, target).derived and verdict(ci, target).warning is None


def test_version_from_egg_info_on_rhel_layout(tmp_path: Path) -> None:
    ci = _read(tmp_path, {"/usr/lib/python3.9/site-packages/cloudinit/__init__.py": "",
                          "/usr/lib/python3.9/site-packages/cloud_init-23.4-py3.9.egg-info/PKG-INFO": "x",
                          "/etc/cloud/cloud.cfg": "users: [default]\n"})
    assert ci.installed is not None and ci.installed.evidence == "root /usr/lib/python3.9/site-packages/cloudinit"
    assert ci.version is not None and ci.version.value == "23.4"
    assert ci.default_user is None  # no system_info in this file: the distro's built-in default


def test_ec2_alone_reaches_only_the_metadata_service(tmp_path: Path) -> None:
    """Booted: [ Ec2, None ] takes user data from a metadata service, never from a config drive.
    A warning where the cloud's paths are unknown; refused, naming the file, on a cloud that
    declares a config drive only."""
    ci = _read(tmp_path, _installed({"/etc/cloud/cloud.cfg.d/99-ec2.cfg": "datasource_list: [ Ec2, None ]\n"}))
    assert ci.datasource_list == Fact(["Ec2", "None"], "root /etc/cloud/cloud.cfg.d/99-ec2.cfg")
    outcome = verdict(ci, "kvm")
    assert outcome.refusal is None and not outcome.derived
    assert outcome.warning is not None and outcome.warning.startswith(
        "cloud-init datasource_list [Ec2, None] (from root /etc/cloud/cloud.cfg.d/99-ec2.cfg) reaches OpenStack "
        "only through the metadata service: on a cloud that gives guests only a config drive")
    refusal = verdict(ci, "kvm", frozenset({"config-drive"})).refusal
    assert refusal == ("cloud-init datasource_list [Ec2, None] (from root /etc/cloud/cloud.cfg.d/99-ec2.cfg) reaches "
                       "OpenStack only through the metadata service (Ec2), which kvm on a cloud declaring config "
                       "drive does not offer: the guest will never get its SSH key there")
    assert verdict(ci, "kvm", frozenset({"metadata-service"})) == verdict(ci, "lxc") == Outcome()


# (datasource_list, the paths the cloud declares or None, what the rule gives)
RULES = [
    (["OpenStack", "ConfigDrive", "None"], None, "pass"),
    (["OpenStack", "None"], None, "warning"),
    (["OpenStack", "None"], {"metadata-service"}, "pass"),
    (["OpenStack", "None"], {"config-drive"}, "refusal"),
    (["ConfigDrive", "None"], None, "mandatory"),
    (["ConfigDrive", "None"], {"config-drive"}, "mandatory"),
    (["ConfigDrive", "None"], {"metadata-service"}, "refusal"),
    (["Ec2", "None"], None, "warning"),
    (["Ec2"], None, "warning"),
    (["Ec2", "None"], {"config-drive", "metadata-service"}, "pass"),
    (["Ec2", "None"], {"config-drive"}, "refusal"),
    # ds-identify checks a longer list, and finds Ec2 only on a platform it recognises (not OpenStack)
    (["Ec2", "NoCloud", "None"], None, "refusal"),
    (["Ec2", "ConfigDrive", "None"], None, "mandatory"),
    (["NoCloud", "None"], None, "refusal"),
    ([], None, "refusal"),
]


@pytest.mark.parametrize(("listed", "declared", "expected"), RULES)
def test_datasource_rule(listed: list[str], declared: set[str] | None, expected: str) -> None:
    ci = CloudInit(installed=Fact(True, "root /usr/bin/cloud-init"), datasource_list=Fact(listed, "root 99.cfg"))
    outcome = verdict(ci, "kvm", None if declared is None else frozenset(declared))
    drive = outcome.derived.get("img_config_drive")
    got = ("refusal" if outcome.refusal else "warning" if outcome.warning else
           "mandatory" if drive is not None and drive.value == "mandatory" else
           "pass" if outcome == Outcome() else repr(outcome))
    assert got == expected, outcome
    assert sum(map(bool, (outcome.refusal, outcome.warning, outcome.derived))) <= 1


def test_config_drive_only_derives_mandatory(tmp_path: Path) -> None:
    ci = _read(tmp_path, _installed({"/etc/cloud/cloud.cfg.d/90-dpkg.cfg": "datasource_list: [ ConfigDrive, None ]\n"}))
    outcome = verdict(ci, "qemu")
    assert outcome.refusal is None and outcome.warning is None
    assert outcome.derived["img_config_drive"].value == "mandatory"
    assert "90-dpkg.cfg" in outcome.derived["img_config_drive"].evidence


def test_later_file_wins_lexically_and_mappings_merge(tmp_path: Path) -> None:
    ci = _read(tmp_path, _installed({
        "/etc/cloud/cloud.cfg.d/10-good.cfg": "datasource_list: [ConfigDrive, OpenStack]\n",
        "/etc/cloud/cloud.cfg.d/90-bad.cfg": "datasource_list: '[ Ec2, None ]'\n"
                                              "system_info:\n  default_user:\n    name: cloud\n",
        "/etc/cloud/cloud.cfg.d/95-ignored.txt": "datasource_list: [OpenStack]\n",
    }))
    assert ci.datasource_list == Fact(["Ec2", "None"], "root /etc/cloud/cloud.cfg.d/90-bad.cfg")
    assert ci.default_user is not None and ci.default_user.value == "cloud"
    outcome = verdict(ci, "kvm")
    assert outcome.warning is not None and "90-bad.cfg" in outcome.warning

    ci = _read(tmp_path / "swapped", _installed({
        "/etc/cloud/cloud.cfg.d/10-bad.cfg": "datasource_list: [Ec2, None]\n",
        "/etc/cloud/cloud.cfg.d/90-good.cfg": "datasource_list: [OpenStack, None]\ndatasource:\n  Ec2: {}\n",
    }))
    assert ci.datasource_list == Fact(["OpenStack", "None"], "root /etc/cloud/cloud.cfg.d/90-good.cfg")
    assert verdict(ci, "kvm").refusal is None and not verdict(ci, "kvm").derived


def test_datasource_settings_alone_do_not_limit_the_list(tmp_path: Path) -> None:
    ci = _read(tmp_path, _installed({"/etc/cloud/cloud.cfg.d/50-os.cfg": "datasource:\n  OpenStack:\n    timeout: 5\n"}))
    assert ci.datasource_list is not None and ci.datasource_list.value is None
    assert verdict(ci, "vmware") == verdict(ci, "kvm") and verdict(ci, "kvm").refusal is None


def test_unparsable_file_is_skipped_like_cloud_init(tmp_path: Path) -> None:
    ci = _read(tmp_path, _installed({"/etc/cloud/cloud.cfg.d/20-broken.cfg": "datasource_list: [Ec2\n  : :\n",
                                     "/etc/cloud/cloud.cfg.d/30-list.cfg": "- datasource_list\n",
                                     "/etc/cloud/cloud.cfg.d/10-cd.cfg": "datasource_list: [ConfigDrive]\n"}))
    assert ci.datasource_list == Fact(["ConfigDrive"], "root /etc/cloud/cloud.cfg.d/10-cd.cfg")
    assert any("20-broken.cfg is not valid YAML" in n for n in ci.notes)
    assert any("30-list.cfg: top level is a list" in n for n in ci.notes)
    assert verdict(ci, "kvm").derived["img_config_drive"].value == "mandatory"


def test_disabled_by_marker_file(tmp_path: Path) -> None:
    ci = _read(tmp_path, _installed({"/etc/cloud/cloud-init.disabled": ""}))
    assert ci.disabled == Fact(True, "root /etc/cloud/cloud-init.disabled")
    outcome = verdict(ci, "kvm")
    assert outcome.refusal is None and outcome.warning and "disabled" in outcome.warning


def test_disabled_on_grub_command_line(tmp_path: Path) -> None:
    grub = ("menuentry 'Debian' {\n  linux /vmlinuz root=UUID=x ro console=ttyS0 cloud-init=disabled quiet\n}\n"
            "# linux /vmlinuz cloud-init=enabled\n")
    ci = _read(tmp_path, _installed({"/boot/grub/grub.cfg": grub}))
    assert ci.disabled == Fact(True, "cloud-init=disabled on the kernel command line: root /boot/grub/grub.cfg line 2")
    assert verdict(ci, "kvm").warning is not None


def test_enabled_on_command_line_overrides_marker(tmp_path: Path) -> None:
    ci = _read(tmp_path, _installed({"/etc/cloud/cloud-init.disabled": "",
                                     "/etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="quiet cloud-init=enabled"\n'}))
    assert ci.disabled is None
    assert any("overridden by cloud-init=enabled: root /etc/default/grub line 1" in n for n in ci.notes)


def test_disabled_in_separate_boot_partition_bls_entry(tmp_path: Path) -> None:
    entry = ("title Rocky Linux\nversion 5.14.0\nlinux /vmlinuz-5.14.0\n"
             "options root=UUID=x ro console=ttyS0,115200n8 cloud-init=disabled\n")
    with _ext4(tmp_path, _installed(), "root") as root, \
            _ext4(tmp_path, {"/loader/entries/abc-5.14.0.conf": entry, "/grub2/grub.cfg": "blscfg\n"}, "boot") as boot:
        assert read_cloud_init(root, "root").disabled is None
        ci = read_cloud_init(root, "root", boot, "boot")
    assert ci.disabled == Fact(True, "cloud-init=disabled on the kernel command line: "
                                     "boot /loader/entries/abc-5.14.0.conf line 4")


def test_hostile_yaml_ends_in_notes_quickly(tmp_path: Path) -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9))
    ci_files = _installed({
        "/etc/cloud/cloud.cfg.d/10-huge.cfg": b"datasource_list: [OpenStack]\n" + b"#" * (10 << 20),
        "/etc/cloud/cloud.cfg.d/20-deep.cfg": "datasource_list: " + "[" * 10000 + "]" * 10000 + "\n",
        "/etc/cloud/cloud.cfg.d/30-laughs.cfg": laughs,
        "/etc/cloud/cloud.cfg.d/40-ec2.cfg": "datasource_list: [Ec2, None]\n",
    })
    with _ext4(tmp_path, ci_files, size="64M") as root:
        started = time.monotonic()
        ci = read_cloud_init(root, "root")
        assert time.monotonic() - started < 5
    unread = "\n".join(ci.unread)
    assert "root /etc/cloud/cloud.cfg.d/10-huge.cfg is larger than 64 KiB" in unread
    assert "root /etc/cloud/cloud.cfg.d/20-deep.cfg has nested deeper than 32 levels" in unread
    assert "root /etc/cloud/cloud.cfg.d/30-laughs.cfg has aliases expanding to more than 100000 nodes" in unread
    assert ci.datasource_list == Fact(["Ec2", "None"], "root /etc/cloud/cloud.cfg.d/40-ec2.cfg")
    outcome = verdict(ci, "kvm")
    assert outcome.refusal is None and outcome.warning is not None and "10-huge.cfg" in outcome.warning


def test_lxc_has_no_config_drive(tmp_path: Path) -> None:
    drive_only = _read(tmp_path, _installed({"/etc/cloud/cloud.cfg.d/90.cfg": "datasource_list: [ConfigDrive, None]\n"}))
    outcome = verdict(drive_only, "lxc")
    assert outcome.refusal is not None and "only through the config drive (ConfigDrive), which lxc does not offer" \
        in outcome.refusal
    assert verdict(drive_only, "kvm").derived["img_config_drive"].value == "mandatory"
    service_only = _read(tmp_path / "os", _installed({"/etc/cloud/cloud.cfg.d/90.cfg": "datasource_list: [OpenStack]\n"}))
    assert verdict(service_only, "lxc") == Outcome()  # a container never has a config drive to rely on
    assert verdict(service_only, "kvm").warning is not None and not verdict(service_only, "kvm").derived
    with pytest.raises(ValueError, match="unknown hypervisor_type 'xen'"):
        verdict(service_only, "xen")


def test_cloudbase_init_services() -> None:
    where = "windows /Program Files/Cloudbase Solutions/Cloudbase-Init/conf/cloudbase-init.conf"
    prefix = "cloudbaseinit.metadata.services."

    def services(*names: str) -> Fact:
        return Fact({"installed": True, "metadata_services": [prefix + n for n in names]}, where)

    assert cloudbase_verdict(None, "kvm").warning is not None
    assert cloudbase_verdict(Fact({"installed": True, "metadata_services": None}, where), "hyperv").refusal is None
    assert cloudbase_verdict(services("httpservice.HttpService"), "kvm", frozenset({"metadata-service"})) == Outcome()
    assert "only through the metadata service" in (cloudbase_verdict(services("httpservice.HttpService"), "kvm").warning
                                                   or "")
    derived = cloudbase_verdict(services("configdrive.ConfigDriveService"), "vmware").derived
    assert derived["img_config_drive"].value == "mandatory"
    refusal = cloudbase_verdict(services("ec2service.EC2Service"), "kvm").refusal
    assert refusal == (f"cloudbase-init metadata_services [EC2Service] (from {where}) asks neither HttpService nor "
                       "ConfigDriveService: the guest will never get its SSH key on OpenStack")
