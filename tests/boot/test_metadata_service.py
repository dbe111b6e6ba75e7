"""The metadata service answered over real HTTP on loopback, directly and through the relay QEMU
runs per guest connection (its stdin/stdout a socketpair, as libslirp's guestfwd cmd: gives it)."""

from __future__ import annotations

import datetime
import json
import shlex
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from imgpipe.boot.metadata_service import (
    EC2_VERSIONS,
    MetadataService,
    Server,
    lookup,
    serving,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1mYWtla2V5Zm9ydGVzdGluZ29ubHkxMjM0NTY3 boot-check"
UUID = "0b4f3a2e-5d6c-4b7a-8e9f-1a2b3c4d5e6f"
USER_DATA = b"#cloud-config\nruncmd:\n  - [true]\n"
SERVER = Server(uuid=UUID, hostname="bootcheck", public_key=KEY, user_data=USER_DATA)


@pytest.fixture(scope="module")
def service() -> Iterator[MetadataService]:
    with serving(SERVER) as running:
        yield running


def _get(service: MetadataService, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{service.port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_root_lists_the_ec2_versions_and_latest(service: MetadataService) -> None:
    assert _get(service, "/") == (200, "text/plain; charset=UTF-8", "\n".join([*EC2_VERSIONS, "latest"]).encode())


def test_openstack_tree(service: MetadataService) -> None:
    status, _, versions = _get(service, "/openstack")
    assert status == 200 and versions.decode().splitlines()[0] == "2012-08-10"
    assert versions.decode().splitlines()[-1] == "latest"
    assert _get(service, "/openstack/latest/")[2].decode().splitlines() == [
        "meta_data.json", "user_data", "password", "vendor_data.json", "network_data.json", "vendor_data2.json"]
    assert _get(service, "/openstack/2012-08-10")[2].decode().splitlines() == ["meta_data.json", "user_data"]
    status, kind, body = _get(service, "/openstack/latest/meta_data.json")
    meta = json.loads(body)
    assert (status, kind) == (200, "application/json")
    assert meta["uuid"] == UUID and meta["public_keys"] == {"default": KEY}
    assert meta["hostname"] == "bootcheck.novalocal" and meta["name"] == "bootcheck"
    assert _get(service, "/openstack/2018-08-27/user_data")[2] == USER_DATA
    assert json.loads(_get(service, "/openstack/latest/network_data.json")[2]) == {
        "links": [], "networks": [], "services": []}
    assert json.loads(_get(service, "/openstack/latest/vendor_data.json")[2]) == {}
    assert _get(service, "/openstack/2012-08-10/vendor_data.json")[0] == 404
    assert _get(service, "/openstack/2011-01-01/meta_data.json")[0] == 404


def test_ec2_tree_in_novas_listing_format(service: MetadataService) -> None:
    assert _get(service, "/latest")[2] == b"meta-data/\nuser-data"
    listing = _get(service, "/latest/meta-data/")[2].decode().splitlines()
    assert {"instance-id", "hostname", "local-ipv4", "public-keys/", "placement/"} <= set(listing)
    assert listing == sorted(listing)
    assert _get(service, "/latest/meta-data/instance-id")[2] == b"i-00000001"
    assert _get(service, "/latest/meta-data/local-ipv4")[2] == b"169.254.169.15"
    assert _get(service, "/latest/meta-data/public-keys")[2] == b"0=default"  # no trailing slash: nova's quirk
    assert _get(service, "/latest/meta-data/public-keys/0/")[2] == b"openssh-key"
    assert _get(service, "/2009-04-04/meta-data/public-keys/0/openssh-key")[2] == KEY.encode()
    assert _get(service, "/latest/meta-data/placement/availability-zone")[2] == b"nova"
    assert _get(service, "/latest/user-data")[2] == USER_DATA
    assert _get(service, "/ec2/2009-04-04/user-data")[2] == USER_DATA
    # the oldest version has none of the later keys
    assert "local-hostname" not in _get(service, "/1.0/meta-data/")[2].decode().splitlines()


def test_unknown_versions_and_paths_are_404_whatever_the_method(service: MetadataService) -> None:
    """cloud-init asks newer EC2 versions first and falls back on 404; a token PUT gets 404 too."""
    assert _get(service, "/2021-03-23/meta-data/instance-id")[0] == 404
    assert _get(service, "/latest/api/token", method="PUT")[0] == 404
    assert _get(service, "/latest/meta-data/nothing")[0] == 404
    assert _get(service, "/latest/meta-data/instance-id/more")[0] == 404
    assert ("PUT", "/latest/api/token", 404) in service.requests
    assert "/latest/meta-data/instance-id" in service.paths()


def test_future_openstack_versions_are_hidden_from_the_listing() -> None:
    """nova lists only versions released by today; it still serves a future one asked for by name."""
    listing = lookup(SERVER, "/openstack", today=datetime.date(2019, 1, 1)).body.decode().splitlines()
    assert listing[-2:] == ["2018-08-27", "latest"]
    assert lookup(SERVER, "/openstack/2025-04-04/meta_data.json", today=datetime.date(2019, 1, 1)).status == 200


def test_relay_joins_a_guest_connection_to_the_service(service: MetadataService) -> None:
    """The command the guestfwd names, run as QEMU runs it: the connection on stdin and stdout."""
    option = service.guestfwd()
    assert option.startswith("guestfwd=tcp:169.254.169.254:80-cmd:")
    command = shlex.split(option.split("-cmd:", 1)[1].replace(",,", ","))
    guest, relay_end = socket.socketpair()
    with relay_end:
        proc = subprocess.Popen(command, stdin=relay_end, stdout=relay_end, stderr=relay_end)
    with guest:
        guest.sendall(b"GET /latest/meta-data/public-keys/0/openssh-key HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n")
        guest.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: guest.recv(4096), b""))
    assert proc.wait(timeout=20) == 0
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and answer.endswith(b"\r\n\r\n" + KEY.encode())
