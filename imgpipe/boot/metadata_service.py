"""nova's metadata API for one server, served on loopback for a guest booted under QEMU.

The guest reaches it at 169.254.169.254:80 through QEMU's user network: a guestfwd runs
relay.py for each connection, which joins it to this server. Answers follow nova's
api/metadata/handler.py and base.py: `/` lists the EC2 versions, `/openstack` the OpenStack
versions released by today plus latest, `/openstack/<version>/` the files of that version, and
every other path is the EC2 tree (meta-data with public-keys, user-data) with nova's listing format.
Unknown paths and versions are 404, whatever the method (nova answers PUT /latest/api/token so).
"""

from __future__ import annotations

import datetime
import posixpath
import shlex
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from imgpipe.boot.config_drive import KEY_NAME, drive_files
from imgpipe.boot.config_drive import VERSIONS as OPENSTACK_VERSIONS

ADDRESS = "169.254.169.254"
# QEMU's user network for the guest: it contains ADDRESS, so the guest reaches it without a route.
GUEST_NETWORK = "169.254.169.0/24"
GUEST_ADDRESS = "169.254.169.15"  # the first address QEMU's DHCP server hands out
# nova's EC2 VERSIONS (api/metadata/base.py), oldest first
EC2_VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
                "2008-09-01", "2009-04-04")
TEXT = "text/plain"
JSON = "application/json"
DHCP_DOMAIN = "novalocal"  # nova's [api]dhcp_domain default, appended to the hostname
FLAVOR = "m1.small"
PASSWORD = "password"


@dataclass(frozen=True, kw_only=True)
class Server:
    """The one server the metadata service answers for (nova looks it up by the caller's address)."""

    uuid: str
    hostname: str
    public_key: str
    user_data: bytes
    local_ipv4: str = GUEST_ADDRESS
    ec2_id: int = 1
    availability_zone: str = "nova"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT


NOT_FOUND = Answer(404, b"404 Not Found\n\nThe resource could not be found.\n")


def lookup(server: Server, path: str, today: datetime.date | None = None) -> Answer:
    """What nova answers for `path` (the request path without the query)."""
    path = posixpath.normpath("/" + path.lstrip("/"))
    if path == "/":
        return Answer(200, _listing([*EC2_VERSIONS, "latest"]))
    tokens = path.split("/")[1:]
    if tokens[0] == "openstack":
        return _openstack(server, tokens[1:], today or datetime.datetime.now(datetime.timezone.utc).date())
    return _ec2(server, tokens[1:] if tokens[0] == "ec2" else tokens)


def _openstack(server: Server, tokens: list[str], today: datetime.date) -> Answer:
    released = [v for v in OPENSTACK_VERSIONS if v == "latest" or v <= today.isoformat()]
    if not tokens:
        return Answer(200, _listing(released))
    version = tokens[0]
    if version not in OPENSTACK_VERSIONS:
        return NOT_FOUND
    files = _openstack_files(server, version)
    if len(tokens) == 1:
        return Answer(200, _listing(list(files)))
    name = "/".join(tokens[1:])
    if name not in files:
        return NOT_FOUND
    return Answer(200, files[name], JSON if name.endswith(".json") else TEXT)


def _openstack_files(server: Server, version: str) -> dict[str, bytes]:
    """name -> bytes in the order nova lists them (_handle_version): the same content nova writes
    to a config drive, since both come from one lookup, plus the password nova serves (empty)."""
    drive = drive_files(uuid=server.uuid, hostname=_hostname(server), public_key=server.public_key,
                        user_data=server.user_data, name=server.hostname)
    prefix = f"openstack/{version}/"
    own = {p.removeprefix(prefix): data for p, data in drive.items() if p.startswith(prefix)}
    files = {"meta_data.json": own["meta_data.json"], "user_data": own["user_data"]}
    if _since(OPENSTACK_VERSIONS, "2013-04-04", version):
        files[PASSWORD] = b""
    files.update({k: v for k, v in own.items() if k not in files})
    return files


def _ec2(server: Server, tokens: list[str]) -> Answer:
    version = tokens[0]
    if version == "latest":
        version = EC2_VERSIONS[-1]
    if version not in EC2_VERSIONS:
        return NOT_FOUND
    node: Any = _ec2_tree(server, version)
    for token in tokens[1:]:
        if not isinstance(node, dict) or token not in node:
            return NOT_FOUND
        node = node[token]
    return Answer(200, _ec2_print(node))


def _ec2_tree(server: Server, version: str) -> dict[str, Any]:
    """nova's get_ec2_metadata for a server with one key pair and no floating IP."""
    hostname = _hostname(server)
    meta: dict[str, Any] = {
        "ami-id": "ami-00000001",
        "ami-launch-index": 0,
        "ami-manifest-path": "FIXME",
        "instance-id": f"i-{server.ec2_id:08x}",
        "hostname": hostname,
        "local-ipv4": server.local_ipv4,
        "reservation-id": "r-imgpipe0",
        "security-groups": ["default"],
        "public-keys": {"0": {"_name": f"0={KEY_NAME}", "openssh-key": server.public_key}},
    }
    if _since(EC2_VERSIONS, "2007-01-19", version):
        meta.update({"local-hostname": hostname, "public-hostname": hostname, "public-ipv4": ""})
    if _since(EC2_VERSIONS, "2007-08-29", version):
        meta["instance-type"] = FLAVOR
    if _since(EC2_VERSIONS, "2007-12-15", version):
        meta["block-device-mapping"] = {"ami": "vda", "root": "/dev/vda"}
    if _since(EC2_VERSIONS, "2008-02-01", version):
        meta["placement"] = {"availability-zone": server.availability_zone}
    if _since(EC2_VERSIONS, "2008-09-01", version):
        meta["instance-action"] = "none"
    return {"meta-data": meta, "user-data": server.user_data}


def _ec2_print(node: Any) -> bytes:
    """nova's ec2_md_print: a mapping lists its keys sorted, a sub-mapping as "key/" (or its _name)."""
    if isinstance(node, dict):
        lines = []
        for key in sorted(k for k in node if k != "_name"):
            value = node[key]
            lines.append(str(value.get("_name", key + "/")) if isinstance(value, dict) else key)
        return "\n".join(lines).encode()
    if isinstance(node, list):
        return "\n".join(node).encode()
    return node if isinstance(node, bytes) else str(node).encode()


def _hostname(server: Server) -> str:
    return f"{server.hostname}.{DHCP_DOMAIN}"


def _since(versions: tuple[str, ...] | list[str], first: str, version: str) -> bool:
    return list(versions).index(version) >= list(versions).index(first)


def _listing(names: list[str]) -> bytes:
    return "\n".join(names).encode()


@dataclass
class MetadataService:
    """A running service: its loopback port and every request it answered, (method, path, status)."""

    port: int
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    network: str = GUEST_NETWORK

    def guestfwd(self) -> str:
        """The -netdev user option that sends the guest's connections to ADDRESS:80 here: QEMU
        runs the command once per connection with the connection on its stdin and stdout."""
        relay = [sys.executable, "-I", "-S", str(Path(__file__).with_name("relay.py")), str(self.port)]
        command = " ".join(shlex.quote(part) for part in relay)
        return f"guestfwd=tcp:{ADDRESS}:80-cmd:{command}".replace(",", ",,")

    def paths(self) -> list[str]:
        return [path for _, path, status in self.requests if status == 200]


@contextmanager
def serving(server: Server) -> Iterator[MetadataService]:
    """The metadata service on 127.0.0.1 (a free port) for as long as the block runs."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "imgpipe-metadata"
        sys_version = ""

        def _answer(self) -> None:
            answer = lookup(server, self.path.split("?", 1)[0])
            with lock:
                service.requests.append((self.command, self.path, answer.status))
            self.send_response(answer.status)
            charset = "; charset=UTF-8" if answer.content_type == TEXT else ""  # as webob sets it
            self.send_header("Content-Type", answer.content_type + charset)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)

        do_GET = do_HEAD = do_PUT = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            """The requests are kept on the service; nothing goes to stderr."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    service = MetadataService(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, name="metadata-service", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
