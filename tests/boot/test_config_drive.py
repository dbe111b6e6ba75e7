"""The config drive read back by independent tools: isoinfo (genisoimage) and blkid (util-linux)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from imgpipe.boot.config_drive import (
    VERSIONS,
    build_config_drive,
    drive_files,
    marker_user_data,
)

UUID = "6a1d2e4c-1f7b-4d5e-9a0b-3c2d1e0f9a8b"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1mYWtla2V5Zm9ydGVzdGluZ29ubHkxMjM0NTY3 boot-check"

def _isoinfo(*args: str) -> bytes:
    return subprocess.run(["isoinfo", *args], check=True, capture_output=True).stdout


def _build(tmp: Path, **extra: str) -> tuple[Path, bytes]:
    user_data = marker_user_data("imgpipe-marker-0123456789")
    return build_config_drive(tmp / "disk.config", uuid=UUID, hostname="bootcheck", public_key=KEY,
                              user_data=user_data, **extra), user_data


def test_label_rock_ridge_and_joliet(tmp_path: Path) -> None:
    iso, _ = _build(tmp_path)
    described = _isoinfo("-d", "-i", str(iso)).decode()
    assert "Volume id: config-2" in described
    assert "Joliet with UCS level 3 found" in described
    assert "Rock Ridge signatures version 1 found" in described
    blkid = subprocess.run(["blkid", "-p", "-o", "export", str(iso)], check=True, capture_output=True, text=True).stdout
    assert "LABEL=config-2" in blkid.splitlines() and "TYPE=iso9660" in blkid.splitlines()
    assert not [p for p in tmp_path.iterdir() if p.name != "disk.config"]


def test_every_file_reads_back_through_rock_ridge_and_joliet(tmp_path: Path) -> None:
    iso, user_data = _build(tmp_path, name="Boot check", mac="fa:16:3e:00:00:01")
    expected = {"/" + p for p in drive_files(uuid=UUID, hostname="bootcheck", public_key=KEY, user_data=user_data)}
    for flag in ("-R", "-J"):
        listed = {line for line in _isoinfo(flag, "-f", "-i", str(iso)).decode().splitlines()
                  if line.count("/") == 3}
        assert listed == expected, flag
        for path in ("/openstack/latest/user_data", "/openstack/2012-08-10/user_data"):
            assert _isoinfo(flag, "-x", path, "-i", str(iso)) == user_data
    meta = json.loads(_isoinfo("-R", "-x", "/openstack/latest/meta_data.json", "-i", str(iso)))
    assert meta["uuid"] == UUID and meta["hostname"] == "bootcheck" and meta["name"] == "Boot check"
    assert meta["public_keys"] == {"default": KEY}
    assert meta["keys"] == [{"name": "default", "type": "ssh", "data": KEY}]
    assert meta["launch_index"] == 0 and meta["availability_zone"] == "nova" and len(meta["project_id"]) == 32
    assert meta["devices"] == [] and meta["dedicated_cpus"] == [] and len(meta["random_seed"]) == 684
    folsom = json.loads(_isoinfo("-R", "-x", "/openstack/2012-08-10/meta_data.json", "-i", str(iso)))
    assert "random_seed" not in folsom and "project_id" not in folsom and folsom["public_keys"] == {"default": KEY}
    network = json.loads(_isoinfo("-R", "-x", "/openstack/latest/network_data.json", "-i", str(iso)))
    assert network["links"][0]["ethernet_mac_address"] == "fa:16:3e:00:00:01"
    assert network["networks"][0]["type"] == "ipv4_dhcp"
    for name in ("vendor_data.json", "vendor_data2.json"):
        assert json.loads(_isoinfo("-J", "-x", f"/openstack/latest/{name}", "-i", str(iso))) == {}


def test_versions_carry_only_their_files() -> None:
    files = drive_files(uuid=UUID, hostname="h", public_key=KEY, user_data=b"#cloud-config\n")
    assert VERSIONS[0] == "2012-08-10" and VERSIONS[-1] == "latest" and len(VERSIONS) == 11
    assert not any(p.startswith("openstack/2012-08-10/") and "vendor" in p for p in files)
    assert "openstack/2013-10-17/vendor_data.json" in files and "openstack/2013-10-17/network_data.json" not in files
    assert "openstack/2015-10-15/network_data.json" in files and "openstack/2015-10-15/vendor_data2.json" not in files
    assert "openstack/2016-10-06/vendor_data2.json" in files
    assert json.loads(files["openstack/latest/network_data.json"]) == {"links": [], "networks": [], "services": []}


def test_marker_runs_in_a_real_shell_and_is_not_in_the_user_data(tmp_path: Path) -> None:
    marker = "imgpipe-5f0e9c1d2b3a"
    user_data = marker_user_data(marker)
    assert user_data.startswith(b"#cloud-config\n") and marker.encode() not in user_data
    command = yaml.safe_load(user_data)["runcmd"][0]
    assert command[:2] == ["sh", "-c"]
    serial, console = tmp_path / "ttyS0", tmp_path / "console"
    script = command[2].replace("/dev/ttyS0", str(serial)).replace("/dev/console", str(console))
    subprocess.run(["sh", "-c", script], check=True)
    assert serial.read_text() == console.read_text() == marker + "\n"
    with pytest.raises(ValueError):
        marker_user_data("x'; reboot; '")


def test_replaces_atomically_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    old = tmp_path / "disk.config"
    old.write_bytes(b"old")
    iso, _ = _build(tmp_path)
    assert iso == old and b"config-2" in iso.read_bytes()[32768:34816]
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "disk.config").mkdir()
    with pytest.raises(OSError):
        build_config_drive(blocked / "disk.config", uuid=UUID, hostname="h", public_key=KEY, user_data=b"")
    assert [p.name for p in blocked.iterdir()] == ["disk.config"] and (blocked / "disk.config").is_dir()
