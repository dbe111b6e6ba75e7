"""Derived properties per profile, through `inspect --json` and a real publish to a local Glance."""

from __future__ import annotations

import json
from pathlib import Path

import guest_disks as gd
import pytest
from typer.testing import CliRunner

from imgpipe.cli import app
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api

runner = CliRunner()


def derived(path: Path) -> dict[str, dict[str, str]]:
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    return {profile: {k: v["value"] for k, v in props.items()}
            for profile, props in json.loads(result.stdout)["derived_properties"].items()}


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("derive")
    variants = {"debian-uefi": gd.Guest(agent=True),
                "ubuntu-hybrid": gd.Guest(bios=True, os_release="ubuntu2204"),
                "rhel-bios": gd.Guest(loaders={}, bios=True, os_release="rhel9", agent=True),
                "no-os-release": gd.Guest(os_release=None)}
    return {name: gd.build(base / f"{name}.qcow2", g) for name, g in variants.items()}


def test_uefi_only_debian(disks: dict[str, Path]) -> None:
    props = derived(disks["debian-uefi"])
    assert props["kvm"] == {"hw_firmware_type": "uefi", "architecture": "x86_64", "os_type": "linux",
                            "os_distro": "debian", "os_version": "12", "hw_qemu_guest_agent": "yes"}
    assert props["vmware"] == {"hw_firmware_type": "uefi", "architecture": "x86_64", "os_type": "linux",
                               "vmware_ostype": "debian12_64Guest"}  # no os_distro: it overrides vmware_ostype
    assert "hw_qemu_guest_agent" not in props["hyperv"] and "hw_firmware_type" not in props["lxc"]
    assert props["docker"] == {}


def test_hybrid_keeps_bios_default(disks: dict[str, Path]) -> None:
    props = derived(disks["ubuntu-hybrid"])
    assert "hw_firmware_type" not in props["kvm"]
    assert props["kvm"]["os_distro"] == "ubuntu" and props["vmware"]["vmware_ostype"] == "ubuntu64Guest"
    assert "hw_qemu_guest_agent" not in props["kvm"]


def test_rhel_bios(disks: dict[str, Path]) -> None:
    props = derived(disks["rhel-bios"])
    assert props["qemu"]["os_distro"] == "rhel" and props["qemu"]["hw_qemu_guest_agent"] == "yes"
    assert props["vmware-sparse"]["vmware_ostype"] == "rhel9_64Guest"


def test_no_os_release_derives_no_os_properties(disks: dict[str, Path]) -> None:
    props = derived(disks["no-os-release"])
    assert not {"os_distro", "os_version", "os_type"} & set(props["kvm"])
    assert "vmware_ostype" not in props["vmware"]


@pytest.mark.slow
def test_publish_derives_and_user_properties_win(glance, disks: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["publish", str(disks["debian-uefi"]), "-p", "kvm", "-p", "vmware-sparse",
                                 "--name", "derived", "--cloud", "test", "--property", "os_version=12.5",
                                 "--work-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["derived_properties"]["kvm"]["os_distro"]["evidence"].endswith("/etc/os-release (ID=debian)")
    cloud = clouds.connect("test")
    images = {r["profile"]: glance_api.get_image(cloud, r["image_id"]) for r in report["images"]}
    kvm, vmware = images["kvm"], images["vmware-sparse"]
    assert kvm["hw_firmware_type"] == "uefi" and kvm["os_distro"] == "debian"
    assert kvm["os_version"] == "12.5"  # the user's property overrides the derived one
    assert vmware["vmware_ostype"] == "debian12_64Guest" and "os_distro" not in vmware
    bare = runner.invoke(app, ["publish", str(disks["debian-uefi"]), "-p", "kvm", "--name", "plain",
                               "--cloud", "test", "--no-guest-properties", "--work-dir", str(tmp_path), "--json"])
    assert bare.exit_code == 0, bare.stderr
    image = glance_api.get_image(cloud, json.loads(bare.stdout)["images"][0]["image_id"])
    assert "hw_firmware_type" not in image and "os_distro" not in image
