#!/usr/bin/env python3
"""Run a real OpenStack Glance (optionally behind a real Keystone, with a real Barbican) on loopback.

Why: imgpipe's demo and tests must talk to the same server code users upload
to, not a mock: Glance's upload inspection, status machine and error codes
are what imgpipe has to cope with. This module is stdlib only, so it runs with
a bare ``python3`` too (``cd scripts && python3 -m imgpipe_dev.localcloud ...``).

CLI::

    python3 -m imgpipe_dev.localcloud start [--keystone [--barbican]] [--port P] [--state-dir DIR]
        [--name NAME] [--store NAME ...] [--web-download-port P] [--convert-to raw|qcow2|vmdk]
    python3 -m imgpipe_dev.localcloud stop|kill|status [--state-dir DIR]

Python API (for tests)::

    cloud = start(state_dir, port=None, keystone=False, name="local", barbican=False)  # -> LocalCloud
    stop(state_dir); kill(state_dir); status(state_dir)

The servers run from a venv outside the repo (``$IMGPIPE_CLOUD_VENV`` or
``~/.cache/imgpipe/cloud-venv``), built from ``requirements-cloud.txt`` and
rebuilt when that file changes. Everything else lives in the state dir
(default ``.localcloud/`` at the repo top)::

    instance.json   mode, cloud name and ports, kept so a restart reuses them
    secrets.json    generated passwords (mode 0600, never printed)
    clouds.yaml     the clouds below (mode 0600, it holds passwords)
    glance/         etc/ (glance-api.conf + paste ini), glance.sqlite,
                    images/, staging/, tasks/
    keystone/       etc/keystone.conf, keystone.sqlite, fernet-keys/,
                    credential-keys/
    barbican/       barbican.conf (found through HOME=barbican/), etc/ (paste ini,
                    WSGI module), barbican.sqlite
    *.pid           gunicorn master pid = process group of each server
    logs/           glance.log, keystone.log, barbican.log (gunicorn + service output),
                    setup.log (db_sync, fernet_setup, bootstrap)

Restarting a stopped or killed instance keeps its DB, image store and ports,
so images uploaded before the kill are still there and clouds.yaml stays valid.

clouds.yaml (what imgpipe reads). Load it with
``region = openstack.config.OpenStackConfig(config_files=[path]).get_one(cloud=NAME)``
and take ``session = region.get_session()``; then:

* noauth (default): one cloud ``NAME`` with ``auth_type: none``,
  ``auth: {endpoint: GLANCE_URL}``, ``image_endpoint_override: GLANCE_URL``
  and ``region_name: RegionOne``. Glance trusts every request as admin.
  The image endpoint is ``region.get_endpoint('image')``; pass it to
  glanceclient as ``Client('2', session=session, endpoint_override=...)``.
* keystone: cloud ``NAME`` is user ``member`` (role member) in project
  ``demo``; cloud ``NAME-admin`` is the bootstrap ``admin`` in project
  ``admin``. Both have ``auth_type: password``, ``auth: {auth_url, username,
  password, project_name, user_domain_name, project_domain_name}``,
  ``region_name: RegionOne``, ``interface: public``,
  ``identity_api_version: 3``. There is no endpoint override: the image
  endpoint comes from the catalog,
  ``session.get_endpoint(service_type='image', interface='public')``.
* barbican (needs keystone): Barbican 23 (simple_crypto plugin, a generated KEK, sqlite)
  is in the catalog as ``key-manager``, and Glance reads image-signing certificates from
  it with the uploader's token (castellan's barbican backend): signed uploads verify.
"""

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import sqlite3
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
REQUIREMENTS = SCRIPTS_DIR / "requirements-cloud.txt"
DEFAULT_STATE_DIR = SCRIPTS_DIR.parent / ".localcloud"
DEFAULT_NAME = "local"
REGION = "RegionOne"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
SERVICES = ("glance", "keystone", "barbican")
SQLITE_BUSY_SECONDS = 60  # how long a locked sqlite write waits before failing
FAULT_HEADER = "X-Imgpipe-Fault"
ACCESS_LOG_FORMAT = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                     f'fault=%({{{FAULT_HEADER.lower()}}}i)s')
NOAUTH_POLICY = "noauth-policy.yaml"
# Import tasks need an owner (tasks.owner is NOT NULL) and Glance's noauth context has no
# project: import-enabled noauth clouds use this context instead (a module in etc/).
OWNED_NOAUTH = (
    "from glance.api.middleware.context import UnauthenticatedContextMiddleware\n"
    "import glance.context\n\n\n"
    "class OwnedContext(UnauthenticatedContextMiddleware):\n"
    "    def process_request(self, req):\n"
    "        req.context = glance.context.RequestContext(\n"
    "            user_id='noauth', project_id='noauth', roles=['admin'], is_admin=True)\n")


# oslo.db opens every SQLite transaction with a plain (deferred) BEGIN. A transaction that
# reads and then writes while another connection writes fails at once with "database is
# locked" (HTTP 500): SQLite does not wait where waiting could deadlock, whatever the busy
# timeout. BEGIN IMMEDIATE takes the write lock first, so writers queue within the timeout.
# A gunicorn hook (in each worker, before the app loads) installs it for every engine:
# class-level listeners run before oslo.db's own, which then sees the transaction begun.
SQLITE_BEGIN_IMMEDIATE = """

def post_fork(server, worker):
    from sqlalchemy import event, text
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "begin")
    def begin_immediate(conn):
        if conn.dialect.name == "sqlite" and "in_transaction" not in conn.info:
            conn.execute(text("BEGIN IMMEDIATE"))
            conn.info["in_transaction"] = True
"""


class LocalCloudError(RuntimeError):
    """A local cloud could not be installed, started or reached."""


@dataclasses.dataclass(frozen=True)
class LocalCloud:
    """Where a started instance answers and where its files are."""

    state_dir: Path
    name: str
    admin_name: str | None
    glance_url: str
    keystone_url: str | None
    clouds_yaml: Path
    pids: dict[str, int]
    logs: dict[str, Path]
    barbican_url: str | None = None

    @property
    def cloud_names(self) -> tuple[str, ...]:
        """Every cloud in clouds.yaml, the one imgpipe should use first."""
        return (self.name,) if self.admin_name is None else (self.name, self.admin_name)

    def summary(self) -> str:
        """One line for people: which cloud, where it answers, which clouds.yaml."""
        if self.keystone_url is None:
            auth = "noauth"
        else:
            auth = f"keystone {self.keystone_url}, admin cloud '{self.admin_name}'"
            if self.barbican_url:
                auth += f", barbican {self.barbican_url}"
        return (f"localcloud: cloud '{self.name}' ({auth}) glance {self.glance_url} "
                f"clouds.yaml {self.clouds_yaml}")


# --------------------------------------------------------------------------
# Server venv
# --------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock file: concurrent starts (parallel test
    sessions) must not install into one venv or start one instance twice."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def venv_dir() -> Path:
    """The server venv lives outside the repo so every clone reuses it."""
    configured = os.environ.get("IMGPIPE_CLOUD_VENV")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "imgpipe" / "cloud-venv"


def _requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv() -> Path:
    """Install the server venv unless its stamp matches requirements-cloud.txt.

    The stamp is written only after pip succeeded, so a half-finished
    install (killed, out of disk) is redone from scratch next time. A file
    lock keeps two concurrent starts from installing into the same venv.
    """
    venv = venv_dir()
    stamp = venv / ".requirements.sha256"
    wanted = _requirements_hash()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _locked(venv.parent / f".{venv.name}.lock"):
        if stamp.exists() and stamp.read_text().strip() == wanted:
            return venv
        _install_venv(venv)
        stamp.write_text(wanted + "\n")
    return venv


def _install_venv(venv: Path) -> None:
    log = venv.parent / f"{venv.name}-install.log"
    _say(f"localcloud: installing the server venv {venv} from {REQUIREMENTS.name} "
        f"(about a minute; pip output in {log})")
    began = time.monotonic()
    with open(log, "wb") as out:
        steps = ([sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
                  "--disable-pip-version-check", "--progress-bar", "off",
                  "-r", str(REQUIREMENTS)])
        for argv in steps:
            if subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT).returncode != 0:
                raise LocalCloudError("installing the server venv failed\n" + _tail(log))
    _say(f"localcloud: server venv ready in {time.monotonic() - began:.0f} s")


# --------------------------------------------------------------------------
# State dir: record, secrets, paths
# --------------------------------------------------------------------------

def _record_path(state_dir: Path) -> Path:
    return state_dir / "instance.json"


def _load_record(state_dir: Path) -> dict[str, Any] | None:
    path = _record_path(state_dir)
    return json.loads(path.read_text()) if path.exists() else None


def _save_record(state_dir: Path, record: dict[str, Any]) -> None:
    _record_path(state_dir).write_text(json.dumps(record, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: it holds passwords."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _secrets(state_dir: Path) -> dict[str, str]:
    """Passwords are random per state dir and kept there, so restarts reuse them."""
    path = state_dir / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {user: secrets.token_urlsafe(18) for user in ("admin", "member", "glance")}
    _write_private(path, json.dumps(values, indent=2) + "\n")
    return values


def _barbican_secrets(state_dir: Path) -> dict[str, str]:
    """The Barbican service user's password and the simple_crypto KEK (a Fernet key: urlsafe
    base64 of 32 bytes), added to secrets.json the first time Barbican starts there."""
    values = _secrets(state_dir)
    if "barbican" not in values:
        values["barbican"] = secrets.token_urlsafe(18)
        values["barbican_kek"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        _write_private(state_dir / "secrets.json", json.dumps(values, indent=2) + "\n")
    return values


def _pid_path(state_dir: Path, service: str) -> Path:
    return state_dir / f"{service}.pid"


def _log_path(state_dir: Path, service: str) -> Path:
    return state_dir / "logs" / f"{service}.log"


def _url(port: int) -> str:
    return f"http://{HOST}:{port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # Same option as gunicorn, so a port left in TIME_WAIT by a killed
        # server of ours counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def _workdir(state_dir: Path, service: str) -> Path:
    """A server's own directory: its config, DB and data, and its cwd."""
    return state_dir.resolve() / service


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2]), int(fields[19])


def _group_pids(state_dir: Path, service: str) -> list[int]:
    """Live processes of a server: members of the recorded process group.

    The pid file holds the gunicorn master's pid (= its process group, as it
    leads its own session) and start time. A master with the same pid but
    another start time is a recycled pid, not ours. Without the master, any
    member of the group is one of our orphaned workers: Linux never hands out
    a pid that is still in use as a process group id. Zombies are skipped: a
    killed child of the caller (pytest) stays one until reaped, and orphaned
    workers may never be reaped here (PID 1 need not be an init).
    """
    pid_file = _pid_path(state_dir, service)
    if not pid_file.exists():
        return []
    pgid, started = (int(field) for field in pid_file.read_text().split())
    master = _proc_stat(pgid)
    if master is not None and master[2] != started:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] not in "ZX":
                found.append(int(entry.name))
    return found


def _is_running(state_dir: Path, service: str) -> bool:
    return bool(_group_pids(state_dir, service))


def _signal_service(state_dir: Path, service: str, sig: signal.Signals) -> None:
    for pid in _group_pids(state_dir, service):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    _reap(state_dir, service)


def _reap(state_dir: Path, service: str) -> None:
    """Collect the exit status if the server is our child (the tests' case)."""
    pid_file = _pid_path(state_dir, service)
    if not pid_file.exists():
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(int(pid_file.read_text().split()[0]), os.WNOHANG)


def _stop_service(state_dir: Path, service: str, timeout: float) -> None:
    """SIGTERM the whole group, SIGKILL whatever is left after timeout."""
    _signal_service(state_dir, service, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_running(state_dir, service) and time.monotonic() < deadline:
        time.sleep(0.1)
        _reap(state_dir, service)
    _kill_service(state_dir, service)


def _kill_service(state_dir: Path, service: str) -> None:
    """SIGKILL the group and return once the server's port stops listening."""
    if not _pid_path(state_dir, service).exists():
        return  # never started here, or already stopped: its port is not ours
    _signal_service(state_dir, service, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    port = (_load_record(state_dir) or {}).get(f"{service}_port")
    while _is_running(state_dir, service) or (port and _listening(port)):
        if time.monotonic() > deadline:
            raise LocalCloudError(f"{service} in {state_dir} survived SIGKILL")
        time.sleep(0.05)
        _reap(state_dir, service)
    _pid_path(state_dir, service).unlink(missing_ok=True)


def _listening(port: int) -> bool:
    """Whether a socket still listens on HOST:port, per /proc/net/tcp.

    A killed server's listening socket can outlive its processes for a
    moment: a client connecting then gets a reset instead of a refusal, and
    a restart cannot bind. Reading the table does not connect.
    """
    local = f"{socket.inet_aton(HOST)[::-1].hex().upper()}:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # 0A = TCP_LISTEN
            return True
    return False


@dataclasses.dataclass(frozen=True)
class _Server:
    """One gunicorn-served OpenStack API."""

    service: str
    app: str
    port: int
    threads: int
    probe_url: str
    env: dict[str, str]


def _spawn_gunicorn(venv: Path, state_dir: Path, server: _Server) -> subprocess.Popen[bytes]:
    """Start gunicorn detached (own session) so it outlives the caller.

    gunicorn runs with no arguments and reads ./gunicorn.conf.py instead:
    Keystone's WSGI app parses sys.argv with oslo.config and refuses
    gunicorn's options. gthread workers, not uwsgi: uwsgi breaks
    glanceclient's chunked uploads. A long timeout lets big uploads through.
    """
    service = server.service
    workdir = _workdir(state_dir, service)
    settings = {
        "wsgi_app": server.app, "bind": f"{HOST}:{server.port}",
        "proc_name": f"localcloud {service} {state_dir}",
        "workers": 1, "worker_class": "gthread", "threads": server.threads,
        "timeout": 300, "graceful_timeout": 5, "accesslog": "-",
        # gunicorn's default line and the fault a test proxy injected into the request, so
        # the test suite can tell the server errors it provoked from real ones.
        "access_log_format": ACCESS_LOG_FORMAT,
        # gunicorn >= 24 opens ~/.gunicorn/gunicorn.ctl, one path for every
        # instance: side-by-side clouds would fight over it.
        "control_socket_disable": True,
    }
    (workdir / "gunicorn.conf.py").write_text(
        "".join(f"{key} = {value!r}\n" for key, value in settings.items()) + SQLITE_BEGIN_IMMEDIATE)
    log = _log_path(state_dir, service)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service} on "
                  f"port {server.port}\n".encode())
        out.flush()
        proc = subprocess.Popen([str(venv / "bin" / "gunicorn")], cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **server.env}, start_new_session=True)
    stat = _proc_stat(proc.pid)
    _pid_path(state_dir, service).write_text(f"{proc.pid} {stat[2] if stat else 0}\n")
    return proc


_ACCESS_5XX = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "[^"]*" 5\d\d .* fault=(\S+)$')


def server_errors(log_text: str) -> list[str]:
    """The access-log lines of a server's log where it answered 5xx to a request nobody
    injected a fault into (tests/support/faultproxy.py marks the ones it breaks)."""
    return [line for line in log_text.splitlines()
            if (found := _ACCESS_5XX.match(line)) and found.group(1) == "-"]


def _wait_until_answers(proc: subprocess.Popen[bytes], url: str, log: Path,
                        deadline: float) -> None:
    """Poll url until the server gives any HTTP answer; fail fast if it died."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalCloudError(f"server for {url} exited with {proc.returncode}\n"
                                  + _tail(log))
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP status (Glance answers 300) means it is serving
        except OSError:
            time.sleep(0.1)
    raise LocalCloudError(f"server for {url} did not answer within {START_TIMEOUT:.0f} s\n"
                          + _tail(log))


def _tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return f"---- last lines of {log} ----\n" + "\n".join(text[-lines:])


def _run_setup(state_dir: Path, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run a *-manage command, logging to setup.log; fail with its output."""
    log = _log_path(state_dir, "setup")
    began = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n==== {' '.join(argv)}\n".encode())
        out.flush()
        result = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        out.write(f"==== exit {result.returncode} after {time.monotonic() - began:.1f} s\n"
                  .encode())
    if result.returncode != 0:
        raise LocalCloudError(f"{Path(argv[0]).name} {argv[1:]} failed\n" + _tail(log))


def _ini(sections: dict[str, dict[str, str]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items()) + "\n"
                   for name, opts in sections.items())


def _initialized(component_dir: Path) -> bool:
    """Setup (db_sync, keys, bootstrap) ran with the current server venv.

    Keyed to the requirements hash so an upgraded venv migrates the DB.
    """
    marker = component_dir / ".initialized"
    return marker.exists() and marker.read_text().strip() == _requirements_hash()


def _mark_initialized(component_dir: Path) -> None:
    (component_dir / ".initialized").write_text(_requirements_hash() + "\n")


# --------------------------------------------------------------------------
# Glance
# --------------------------------------------------------------------------

def _glance_conf(state_dir: Path, port: int, keystone_url: str | None,
                 passwords: dict[str, str], features: dict[str, Any],
                 barbican_url: str | None = None) -> dict[str, dict[str, str]]:
    """features: stores (file store names, first = default), web_download_port (a loopback
    port web-download may fetch from), convert_to (image_conversion plugin output format)."""
    base = _workdir(state_dir, "glance")
    stores = features.get("stores") or ["fs"]
    conf = {
        "DEFAULT": {"enabled_backends": ", ".join(f"{s}:file" for s in stores),
                    "enabled_import_methods": "[glance-direct,copy-image,web-download]",
                    "worker_self_reference_url": _url(port)},
        # sqlite's default 5 s busy timeout is too short on a loaded 2-core machine (the
        # suite's TCG boots): writers then fail with "database is locked" as HTTP 500.
        "database": {"connection": f"sqlite:///{base / 'glance.sqlite'}?timeout={SQLITE_BUSY_SECONDS}"},
        "glance_store": {"default_backend": stores[0]},
        **{s: {"filesystem_store_datadir": str(base / ("images" if s == "fs" else f"images-{s}"))}
           for s in stores},
        "os_glance_staging_store": {"filesystem_store_datadir": str(base / "staging")},
        "os_glance_tasks_store": {"filesystem_store_datadir": str(base / "tasks")},
    }
    if features.get("web_download_port"):
        # Glance refuses loopback and ports other than 80/443 for web-download by default.
        conf["import_filtering_opts"] = {"allowed_schemes": "[http]",
                                         "allowed_hosts": "[127.0.0.1]",
                                         "allowed_ports": f"[{features['web_download_port']}]"}
    if features.get("convert_to"):
        conf["image_import_opts"] = {"image_import_plugins": "['image_conversion']"}
        conf["image_conversion"] = {"output_format": features["convert_to"]}
    if keystone_url is None:
        conf["oslo_policy"] = {"policy_file": str(base / "etc" / NOAUTH_POLICY)}
    else:
        # The "keystone" flavor swaps unauthenticated-context (everyone is
        # admin) for authtoken + context in glance-api-paste.ini.
        conf["paste_deploy"] = {"flavor": "keystone"}
        conf["keystone_authtoken"] = {
            "www_authenticate_uri": keystone_url, "auth_url": keystone_url,
            "auth_type": "password", "username": "glance", "password": passwords["glance"],
            "project_name": "service", "user_domain_name": "Default",
            "project_domain_name": "Default", "region_name": REGION,
        }
        if barbican_url:
            conf.update(_glance_key_manager_conf(keystone_url, barbican_url))
    return conf


def _glance_key_manager_conf(keystone_url: str, barbican_url: str) -> dict[str, dict[str, str]]:
    """castellan's barbican backend, for signed images: Glance fetches the signing certificate
    with the uploader's token. castellan's default auth_endpoint (localhost:5000) is not ours."""
    return {"key_manager": {"backend": "barbican"},
            "barbican": {"auth_endpoint": f"{keystone_url}/v3", "barbican_endpoint": barbican_url}}


def _prepare_glance(venv: Path, state_dir: Path, port: int, keystone_url: str | None,
                    passwords: dict[str, str], features: dict[str, Any],
                    barbican_url: str | None = None) -> dict[str, str]:
    """Write Glance's config (every start: port or mode may change), db_sync
    once; return the server's environment."""
    base = _workdir(state_dir, "glance")
    etc = base / "etc"
    for sub in ("etc", "images", "staging", "tasks"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    conf = etc / "glance-api.conf"
    _write_private(conf, _ini(_glance_conf(state_dir, port, keystone_url, passwords, features,
                                           barbican_url)))
    # glance finds the paste ini next to glance-api.conf; the venv ships one
    # with the noauth ("default") and "keystone" pipelines.
    paste = (venv / "etc" / "glance" / "glance-api-paste.ini").read_text()
    env = {"OS_GLANCE_CONFIG_DIR": str(etc)}
    if keystone_url is None and any(features.values()):
        (etc / "owned_noauth.py").write_text(OWNED_NOAUTH)
        paste = paste.replace("[filter:unauthenticated-context]\n",
                              "[filter:unauthenticated-context]\n"
                              "paste.filter_factory = owned_noauth:OwnedContext.factory\n#", 1)
        env["PYTHONPATH"] = str(etc)
    (etc / "glance-api-paste.ini").write_text(paste)
    if keystone_url is None:
        # The default pipeline's unauthenticated context has is_admin=True
        # but no roles, and Glance 33's policies ask for role:admin (is_admin
        # is not even a policy value): noauth Glance answers 403 to all.
        # Make every request admin, as noauth intends.
        (etc / NOAUTH_POLICY).write_text('"context_is_admin": "@"\n')
    if not _initialized(base):
        _run_setup(state_dir, [str(venv / "bin" / "glance-manage"),
                               "--config-file", str(conf), "db_sync"])
        _mark_initialized(base)
    _wal(base / "glance.sqlite")
    return env


def _wal(db_file: Path) -> None:
    """WAL (persistent in the file) lets readers and the one writer overlap: in the rollback
    journal mode every write waits for all reads, and parallel publishes saw 500s."""
    with sqlite3.connect(db_file) as db:
        db.execute("PRAGMA journal_mode=WAL")


# --------------------------------------------------------------------------
# Keystone
# --------------------------------------------------------------------------

def _keystone_conf(state_dir: Path) -> dict[str, dict[str, str]]:
    base = _workdir(state_dir, "keystone")
    return {
        "database": {"connection": f"sqlite:///{base / 'keystone.sqlite'}?timeout={SQLITE_BUSY_SECONDS}"},
        "token": {"provider": "fernet"},
        "fernet_tokens": {"key_repository": str(base / "fernet-keys")},
        "fernet_receipts": {"key_repository": str(base / "fernet-keys")},
        "credential": {"key_repository": str(base / "credential-keys")},
        # bcrypt's minimum cost: a login costs ms instead of ~0.2 s of CPU;
        # bcrypt's own length limit, or Keystone warns on every password.
        "identity": {"password_hash_rounds": "4", "max_password_length": "72"},
    }


def _prepare_keystone(venv: Path, state_dir: Path, port: int,
                      passwords: dict[str, str]) -> dict[str, str]:
    """Write keystone.conf; once per state dir create the DB, keys and the
    bootstrap admin; return the server's environment."""
    base = _workdir(state_dir, "keystone")
    etc = base / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    conf = etc / "keystone.conf"
    _write_private(conf, _ini(_keystone_conf(state_dir)))
    if not _initialized(base):
        manage = [str(venv / "bin" / "keystone-manage"), "--config-file", str(conf)]
        # Key files must belong to whoever runs the server: this user.
        owner = ["--keystone-user", pwd.getpwuid(os.getuid()).pw_name,
                 "--keystone-group", grp.getgrgid(os.getgid()).gr_name]
        _run_setup(state_dir, [*manage, "db_sync"])
        _run_setup(state_dir, [*manage, "fernet_setup", *owner])
        _run_setup(state_dir, [*manage, "credential_setup", *owner])
        url = _url(port)
        _run_setup(state_dir, [*manage, "bootstrap", "--bootstrap-region-id", REGION,
                               "--bootstrap-admin-url", url, "--bootstrap-public-url", url,
                               "--bootstrap-internal-url", url],
                   env={"OS_BOOTSTRAP_PASSWORD": passwords["admin"]})
        _mark_initialized(base)
    _wal(base / "keystone.sqlite")
    return {"OS_KEYSTONE_CONFIG_DIR": str(etc)}


# --------------------------------------------------------------------------
# Barbican
# --------------------------------------------------------------------------

# barbican.wsgi.api loads /etc/barbican/barbican-api-paste.ini, a fixed path: this module
# loads the state dir's copy instead (gunicorn serves it from etc/ on PYTHONPATH).
BARBICAN_WSGI = (
    "from paste import deploy\n\n"
    "application = deploy.loadapp({config!r})\n")


def _barbican_conf(state_dir: Path, port: int, keystone_url: str,
                   passwords: dict[str, str]) -> dict[str, dict[str, str]]:
    base = _workdir(state_dir, "barbican")
    return {
        "DEFAULT": {"host_href": _url(port), "db_auto_create": "True"},
        "database": {"connection": f"sqlite:///{base / 'barbican.sqlite'}?timeout={SQLITE_BUSY_SECONDS}"},
        "secretstore": {"enabled_secretstore_plugins": "store_crypto"},
        "crypto": {"enabled_crypto_plugins": "simple_crypto"},
        "simple_crypto_plugin": {"kek": passwords["barbican_kek"]},
        "keystone_authtoken": {
            "www_authenticate_uri": keystone_url, "auth_url": keystone_url,
            "auth_type": "password", "username": "barbican", "password": passwords["barbican"],
            "project_name": "service", "user_domain_name": "Default",
            "project_domain_name": "Default", "region_name": REGION,
        },
    }


def _prepare_barbican(venv: Path, state_dir: Path, port: int, keystone_url: str,
                      passwords: dict[str, str]) -> dict[str, str]:
    """Write barbican.conf, its paste ini and WSGI module; return the server's environment.

    Each Barbican plugin module parses its own config with no arguments, so the file must be
    where oslo.config looks by default: HOME/barbican.conf, with HOME set to the workdir.
    db_auto_create makes the tables on the first start (no manage step). Barbican 23's
    unauthenticated pipeline is broken: it runs behind keystonemiddleware only.
    """
    base = _workdir(state_dir, "barbican")
    etc = base / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    _write_private(base / "barbican.conf", _ini(_barbican_conf(state_dir, port, keystone_url, passwords)))
    paste = etc / "barbican-api-paste.ini"
    paste.write_text((venv / "etc" / "barbican" / "barbican-api-paste.ini").read_text())
    (etc / "localcloud_barbican.py").write_text(BARBICAN_WSGI.format(config=f"config:{paste}"))
    return {"HOME": str(base), "PYTHONPATH": str(etc)}


def _provision_barbican(keystone_url: str, barbican_url: str, passwords: dict[str, str]) -> None:
    """The barbican service user and the catalog's key-manager endpoint (moved with the port)."""
    ks = _Keystone(keystone_url, passwords["admin"])
    service_project = ks.ensure("projects", "name=service&domain_id=default",
                                {"name": "service", "domain_id": "default"})
    user_id = ks.ensure("users", "name=barbican&domain_id=default", {
        "name": "barbican", "domain_id": "default", "password": passwords["barbican"],
        "default_project_id": service_project})
    ks.grant(service_project, user_id, "service")
    service_id = ks.ensure("services", "type=key-manager", {"name": "barbican", "type": "key-manager"})
    endpoint = {"service_id": service_id, "interface": "public", "region_id": REGION, "url": barbican_url}
    endpoint_id = ks.ensure("endpoints", f"service_id={service_id}&interface=public", endpoint)
    ks.call("PATCH", f"/endpoints/{endpoint_id}", {"endpoint": {"url": barbican_url}})


class _Keystone:
    """Just enough of Keystone's v3 REST API to provision the demo users.

    REST via urllib because the server venv is not importable here and the
    openstack CLI is not installed.
    """

    def __init__(self, url: str, admin_password: str) -> None:
        self.url = url
        self.token = self._admin_token(admin_password)

    def _admin_token(self, password: str) -> str:
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
        }}
        request = urllib.request.Request(
            f"{self.url}/v3/auth/tokens", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.headers["X-Subject-Token"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/v3{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-Auth-Token": self.token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise LocalCloudError(f"keystone {method} {path}: {err.code} "
                                  f"{err.read().decode(errors='replace')}") from err
        return json.loads(payload) if payload else {}

    def ensure(self, collection: str, query: str, create: dict[str, Any]) -> str:
        """Id of the first `collection` item matching query, created if missing."""
        found = self.call("GET", f"/{collection}?{query}")[collection]
        if found:
            return found[0]["id"]
        singular = collection[:-1]
        return self.call("POST", f"/{collection}", {singular: create})[singular]["id"]

    def role_id(self, name: str) -> str:
        return self.call("GET", f"/roles?name={name}")["roles"][0]["id"]

    def grant(self, project_id: str, user_id: str, role: str) -> None:
        self.call("PUT", f"/projects/{project_id}/users/{user_id}/roles/{self.role_id(role)}")


def _provision_keystone(keystone_url: str, glance_url: str, passwords: dict[str, str]) -> None:
    """Idempotently create project demo + user member, the glance service
    user, and the catalog's image endpoint (updated if Glance's port moved)."""
    ks = _Keystone(keystone_url, passwords["admin"])
    domain = "default"
    projects = {name: ks.ensure("projects", f"name={name}&domain_id={domain}",
                                {"name": name, "domain_id": domain})
                for name in ("demo", "service")}
    for user, project, role in (("member", "demo", "member"), ("glance", "service", "service")):
        user_id = ks.ensure("users", f"name={user}&domain_id={domain}", {
            "name": user, "domain_id": domain, "password": passwords[user],
            "default_project_id": projects[project]})
        ks.grant(projects[project], user_id, role)
    service_id = ks.ensure("services", "type=image", {"name": "glance", "type": "image"})
    endpoint = {"service_id": service_id, "interface": "public", "region_id": REGION,
                "url": glance_url}
    endpoint_id = ks.ensure("endpoints", f"service_id={service_id}&interface=public", endpoint)
    ks.call("PATCH", f"/endpoints/{endpoint_id}", {"endpoint": {"url": glance_url}})


# --------------------------------------------------------------------------
# clouds.yaml
# --------------------------------------------------------------------------

def _yaml(value: Any, indent: int = 0) -> str:
    """Emit the small nested dict of clouds.yaml; JSON strings are valid YAML
    scalars, so quoting is safe without a YAML library."""
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{' ' * indent}{key}:\n{_yaml(item, indent + 2)}")
        else:
            lines.append(f"{' ' * indent}{key}: {json.dumps(item)}\n")
    return "".join(lines)


def _password_cloud(keystone_url: str, user: str, password: str, project: str) -> dict[str, Any]:
    return {
        "auth_type": "password",
        "auth": {"auth_url": f"{keystone_url}/v3", "username": user, "password": password,
                 "project_name": project, "user_domain_name": "Default",
                 "project_domain_name": "Default"},
        "region_name": REGION, "interface": "public", "identity_api_version": 3,
    }


def _clouds(name: str, glance_url: str, keystone_url: str | None,
            passwords: dict[str, str]) -> dict[str, Any]:
    if keystone_url is None:
        return {name: {"auth_type": "none", "auth": {"endpoint": glance_url},
                       "image_endpoint_override": glance_url, "region_name": REGION}}
    return {
        name: _password_cloud(keystone_url, "member", passwords["member"], "demo"),
        f"{name}-admin": _password_cloud(keystone_url, "admin", passwords["admin"], "admin"),
    }


def _write_clouds_yaml(path: Path, clouds: dict[str, Any]) -> None:
    header = "# Written by imgpipe_dev.localcloud on every start; edits are overwritten.\n"
    _write_private(path, header + _yaml({"clouds": clouds}))


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def _describe(state_dir: Path, record: dict[str, Any]) -> LocalCloud:
    services = _services(record)
    pids = {}
    for service in services:
        pid_file = _pid_path(state_dir, service)
        if pid_file.exists():
            pids[service] = int(pid_file.read_text().split()[0])
    keystone = record["keystone"]
    return LocalCloud(
        state_dir=state_dir,
        name=record["name"],
        admin_name=f"{record['name']}-admin" if keystone else None,
        glance_url=_url(record["glance_port"]),
        keystone_url=_url(record["keystone_port"]) if keystone else None,
        clouds_yaml=state_dir / "clouds.yaml",
        pids=pids,
        logs={service: _log_path(state_dir, service) for service in (*services, "setup")},
        barbican_url=_url(record["barbican_port"]) if record.get("barbican") else None,
    )


def _services(record: dict[str, Any]) -> tuple[str, ...]:
    if not record["keystone"]:
        return ("glance",)
    return SERVICES if record.get("barbican") else ("glance", "keystone")


def _check_running_matches(state_dir: Path, record: dict[str, Any], port: int | None,
                           keystone: bool, name: str, barbican: bool = False) -> None:
    """An already running instance is reused only if it is what was asked for."""
    wanted = {"keystone": keystone, "name": name, "barbican": barbican}
    if port is not None:
        wanted["glance_port"] = port
    differs = {key: value for key, value in wanted.items() if record.get(key, False) != value}
    if differs:
        raise LocalCloudError(f"{state_dir} is already running with "
                              f"{ {key: record.get(key) for key in differs} }; "
                              f"stop it first to start it with {differs}")


def _new_record(previous: dict[str, Any] | None, port: int | None, keystone: bool,
                name: str, barbican: bool = False) -> dict[str, Any]:
    """Keep the previous ports so clouds.yaml and the catalog stay valid."""
    previous = previous or {}
    record: dict[str, Any] = {"name": name, "keystone": keystone,
                              "glance_port": port or previous.get("glance_port")
                              or _free_port(),
                              "keystone_port": previous.get("keystone_port")}
    if keystone and not record["keystone_port"]:
        record["keystone_port"] = _free_port()
    if barbican:
        record["barbican"] = True
        record["barbican_port"] = previous.get("barbican_port") or _free_port()
    for service in _services(record):
        taken = record[f"{service}_port"]
        if not _port_is_free(taken):
            raise LocalCloudError(f"{service} port {taken} is taken by another process; "
                                  f"free it, or pick another --port or --state-dir")
    return record


def start(state_dir: Path = DEFAULT_STATE_DIR, port: int | None = None,
          keystone: bool = False, name: str = DEFAULT_NAME, stores: tuple[str, ...] = (),
          web_download_port: int | None = None, convert_to: str | None = None,
          barbican: bool = False) -> LocalCloud:
    """Start the instance in state_dir (or just report it if it already runs)
    and return where it answers. stores: several file stores (the first is the default);
    web_download_port: let web-download fetch from 127.0.0.1:PORT; convert_to: turn the
    image_conversion import plugin on with this output format; barbican: a key manager for
    signed images (needs keystone)."""
    if barbican and not keystone:
        raise LocalCloudError("barbican runs behind Keystone only: start with keystone too")
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir / ".lock"):
        record = _load_record(state_dir)
        if record and all(_is_running(state_dir, s) for s in _services(record)):
            _check_running_matches(state_dir, record, port, keystone, name, barbican)
            return _describe(state_dir, record)
        if record:
            stop(state_dir)  # a half-dead instance (one server gone) restarts whole
        fresh = _new_record(record, port, keystone, name, barbican)
        fresh["features"] = {"stores": list(stores), "web_download_port": web_download_port,
                             "convert_to": convert_to}
        return _boot(state_dir, fresh)


def _boot(state_dir: Path, record: dict[str, Any]) -> LocalCloud:
    """Configure and start the servers of record, provision Keystone, write
    clouds.yaml; on any failure leave nothing running."""
    venv = ensure_venv()
    (state_dir / "logs").mkdir(exist_ok=True)
    _save_record(state_dir, record)
    passwords = _barbican_secrets(state_dir) if record.get("barbican") else _secrets(state_dir)
    glance_url = _url(record["glance_port"])
    keystone_url = _url(record["keystone_port"]) if record["keystone"] else None
    barbican_url = _url(record["barbican_port"]) if record.get("barbican") else None
    servers = [_Server("glance", "glance.wsgi.api:application", record["glance_port"], 8,
                       glance_url, _prepare_glance(venv, state_dir, record["glance_port"],
                                                   keystone_url, passwords,
                                                   record.get("features", {}), barbican_url))]
    if keystone_url:
        servers.append(_Server("keystone", "keystone.wsgi.api:application",
                               record["keystone_port"], 4, f"{keystone_url}/v3",
                               _prepare_keystone(venv, state_dir, record["keystone_port"],
                                                 passwords)))
    if keystone_url and barbican_url:
        servers.append(_Server("barbican", "localcloud_barbican:application",
                               record["barbican_port"], 4, barbican_url,
                               _prepare_barbican(venv, state_dir, record["barbican_port"],
                                                 keystone_url, passwords)))
    try:
        # Both boot in parallel: Glance only calls Keystone when serving.
        deadline = time.monotonic() + START_TIMEOUT
        procs = [_spawn_gunicorn(venv, state_dir, server) for server in servers]
        for server, proc in zip(servers, procs, strict=True):
            _wait_until_answers(proc, server.probe_url, _log_path(state_dir, server.service),
                                deadline)
        if keystone_url:
            _provision_keystone(keystone_url, glance_url, passwords)
        if keystone_url and barbican_url:
            _provision_barbican(keystone_url, barbican_url, passwords)
    except BaseException:
        stop(state_dir)
        raise
    _write_clouds_yaml(state_dir / "clouds.yaml",
                       _clouds(record["name"], glance_url, keystone_url, passwords))
    return _describe(state_dir, record)


def stop(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = STOP_TIMEOUT) -> None:
    """Graceful stop (SIGTERM to each server's process group), SIGKILL after timeout."""
    state_dir = Path(state_dir).resolve()
    for service in SERVICES:
        _stop_service(state_dir, service, timeout)


def kill(state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """SIGKILL every server at once, as a crash would (for fault tests)."""
    state_dir = Path(state_dir).resolve()
    for service in SERVICES:
        _kill_service(state_dir, service)


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, bool]:
    """Which of the instance's servers are running; empty if never started."""
    state_dir = Path(state_dir).resolve()
    record = _load_record(state_dir)
    if record is None:
        return {}
    return {service: _is_running(state_dir, service) for service in _services(record)}


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (("start", "install if needed, start, write clouds.yaml"),
                          ("stop", "stop gracefully (SIGKILL after a bound)"),
                          ("kill", "SIGKILL at once, as a crash would"),
                          ("status", "report; exit 0 if running, 3 if not")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                         help="instance directory (default: .localcloud/ at the repo top)")
        if command == "start":
            sub.add_argument("--keystone", action="store_true",
                             help="put a real Keystone in front of Glance")
            sub.add_argument("--barbican", action="store_true",
                             help="with --keystone: a real Barbican for signed images")
            sub.add_argument("--port", type=int, help="Glance port (default: a free one)")
            sub.add_argument("--name", default=DEFAULT_NAME,
                             help=f"cloud name in clouds.yaml (default: {DEFAULT_NAME})")
            sub.add_argument("--store", action="append", default=[],
                             help="file store name (repeatable; the first is the default)")
            sub.add_argument("--web-download-port", type=int,
                             help="allow web-download from http://127.0.0.1:PORT")
            sub.add_argument("--convert-to", choices=("raw", "qcow2", "vmdk"),
                             help="enable the image_conversion import plugin")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "start":
            print(start(args.state_dir, args.port, args.keystone, args.name, tuple(args.store),
                        args.web_download_port, args.convert_to, args.barbican).summary())
        elif args.command == "stop":
            stop(args.state_dir)
        elif args.command == "kill":
            kill(args.state_dir)
        else:
            return _print_status(args.state_dir)
    except LocalCloudError as err:
        _say(f"localcloud: {err}")
        return 1
    return 0


def _print_status(state_dir: Path) -> int:
    """Summary plus each server's state; exit 0 if all run, 3 (LSB) if not."""
    state_dir = state_dir.resolve()
    record = _load_record(state_dir)
    if record is None:
        print(f"localcloud: no instance in {state_dir}")
        return 3
    running = status(state_dir)
    cloud = _describe(state_dir, record)
    states = ", ".join(f"{service} {'running' if up else 'stopped'}"
                       for service, up in running.items())
    print(f"{cloud.summary()} [{states}]")
    return 0 if all(running.values()) else 3


if __name__ == "__main__":
    sys.exit(main())
