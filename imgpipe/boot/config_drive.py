"""A config drive as nova builds one, so boot-check can prove a guest takes its key and user data
from OpenStack before the image is published.

nova (virt/configdrive.py) runs `genisoimage -ldots -allow-lowercase -allow-multidot -l -J -r
-V config-2` over the tree api/metadata/base.py yields: openstack/<version>/ for every OpenStack
metadata version plus latest, each file only from the version that introduced it. cloud-init's
ConfigDrive reader takes the newest version it knows that the drive has, and `latest` only when it
knows none, so every version is written, not only latest. The EC2 tree nova adds is left out:
cloud-init's ConfigDrive datasource does not need it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import pycdlib

VOLUME_LABEL = "config-2"
PUBLISHER = "imgpipe boot-check"
# nova's OPENSTACK_VERSIONS (api/metadata/base.py), oldest first
FOLSOM, GRIZZLY, HAVANA, LIBERTY = "2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15"
NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY = "2016-06-30", "2016-10-06", "2017-02-22", "2018-08-27"
VICTORIA, EPOXY = "2020-10-14", "2025-04-04"
VERSIONS = [FOLSOM, GRIZZLY, HAVANA, LIBERTY, NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY, VICTORIA, EPOXY, "latest"]
KEY_NAME = "default"
_MARKER = re.compile(r"[A-Za-z0-9._-]{8,128}")


def build_config_drive(dest: Path, *, uuid: str, hostname: str, public_key: str, user_data: bytes,
                       name: str | None = None, mac: str | None = None) -> Path:
    """Write the ISO to `dest` atomically; `mac` adds a DHCP network for that NIC to network_data.json."""
    files = drive_files(uuid=uuid, hostname=hostname, public_key=public_key, user_data=user_data,
                        name=name, mac=mac)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, vol_ident=VOLUME_LABEL, pub_ident_str=PUBLISHER, joliet=3, rock_ridge="1.09")
    made: set[str] = set()
    for path, data in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/" + "/".join(parts[:depth])
            if directory not in made:
                iso.add_directory(directory, rr_name=parts[depth - 1], joliet_path=directory)
                made.add(directory)
        # pycdlib reads each BytesIO only in write_fp
        iso.add_fp(io.BytesIO(data), len(data), "/" + path + ";1", rr_name=parts[-1], joliet_path="/" + path)
    temp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        with temp.open("wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
        iso.close()
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
    return dest


def drive_files(*, uuid: str, hostname: str, public_key: str, user_data: bytes, name: str | None = None,
                mac: str | None = None) -> dict[str, bytes]:
    """Path on the drive -> bytes, as nova's metadata_for_config_drive yields them."""
    files: dict[str, bytes] = {}
    project_id = secrets.token_hex(16)
    for version in VERSIONS:
        base = f"openstack/{version}"
        files[f"{base}/meta_data.json"] = _json(_meta_data(version, uuid, hostname, name or hostname,
                                                           public_key, project_id))
        files[f"{base}/user_data"] = user_data
        if _since(HAVANA, version):
            files[f"{base}/vendor_data.json"] = b"{}"
        if _since(LIBERTY, version):
            files[f"{base}/network_data.json"] = _json(_network_data(mac))
        if _since(NEWTON_TWO, version):
            files[f"{base}/vendor_data2.json"] = b"{}"
    return files


def marker_user_data(marker: str) -> bytes:
    """#cloud-config whose runcmd prints `marker` on the serial console and /dev/console.

    The marker is printed from two halves, so it never appears in the user data itself: seeing it
    on the console proves the command ran, not that something echoed the user data."""
    if not _MARKER.fullmatch(marker):
        raise ValueError("marker must be 8-128 characters of A-Z a-z 0-9 . _ -")
    half = len(marker) // 2
    line = f"printf '%s%s\\n' '{marker[:half]}' '{marker[half:]}'"
    command = f"{line} > /dev/ttyS0; {line} > /dev/console"
    return ("#cloud-config\nruncmd:\n  - " + json.dumps(["sh", "-c", command]) + "\n").encode()


def _meta_data(version: str, uuid: str, hostname: str, name: str, public_key: str,
               project_id: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "uuid": uuid,
        "public_keys": {KEY_NAME: public_key},
        "keys": [{"name": KEY_NAME, "type": "ssh", "data": public_key}],
        "hostname": hostname,
        "name": name,
        "launch_index": 0,
        "availability_zone": "nova",
    }
    if _since(GRIZZLY, version):
        meta["random_seed"] = base64.b64encode(os.urandom(512)).decode()
    if _since(LIBERTY, version):
        meta["project_id"] = project_id
    if _since(NEWTON_ONE, version):
        meta["devices"] = []
    if _since(VICTORIA, version):
        meta["dedicated_cpus"] = []
    return meta


def _network_data(mac: str | None) -> dict[str, Any]:
    if mac is None:
        return {"links": [], "networks": [], "services": []}
    return {"links": [{"id": "tap0", "vif_id": "tap0", "type": "ovs", "mtu": 1500, "ethernet_mac_address": mac}],
            "networks": [{"id": "network0", "type": "ipv4_dhcp", "link": "tap0", "network_id": "network0"}],
            "services": []}


def _since(first: str, version: str) -> bool:
    return VERSIONS.index(version) >= VERSIONS.index(first)


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()

