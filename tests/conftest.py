"""Shared fixtures: real disk images built with sfdisk/mkfs/qemu-img, never mocked."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from imgpipe_dev import sample_disk


def qemu_img(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert proc.returncode in ok, proc.stderr
    return proc


def qemu_info(path: Path, fmt: str) -> dict:
    return json.loads(qemu_img("info", "--output=json", "-f", fmt, str(path)).stdout)


@pytest.fixture(scope="session")
def sample_qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128 MiB GPT disk (EFI + ext4 root with 16 MiB of real files), compressed qcow2."""
    dest = tmp_path_factory.mktemp("sample") / "guest.qcow2"
    return sample_disk.build(dest, size_mib=128, data_mib=16)


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory: pytest.TempPathFactory, sample_qcow2: Path) -> Path:
    dest = tmp_path_factory.mktemp("sample-raw") / "guest.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(sample_qcow2), str(dest))
    return dest


@pytest.fixture(scope="session")
def glance_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Glance (noauth, sqlite, file store) on loopback for the whole session."""
    from imgpipe_dev import localcloud

    state = tmp_path_factory.mktemp("glance")
    cloud = localcloud.start(state, name="test")
    yield cloud
    localcloud.stop(state)


@pytest.fixture
def glance(glance_server, monkeypatch: pytest.MonkeyPatch):
    """The session Glance, with OS_CLIENT_CONFIG_FILE pointing at its clouds.yaml for this test
    only (as a user would set it), so other tests' clouds.yaml files are not shadowed."""
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(glance_server.clouds_yaml))
    return glance_server


@pytest.fixture(autouse=True)
def no_server_errors(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A test fails on any HTTP 5xx a local Glance or Keystone of this session answered while
    it ran, unless the test's fault proxy injected the fault or the test declares the request
    with @pytest.mark.server_errors(pattern) (issue 20: "database is locked" 500s hidden by
    retries). Logs are read from where each test left off."""
    from imgpipe_dev import localcloud

    base = tmp_path_factory.getbasetemp()
    declared = [re.compile(m.args[0]) for m in request.node.iter_markers("server_errors")]

    def logs() -> dict[Path, int]:
        found = {log.resolve() for log in [*base.glob("*/logs/*.log"), *base.glob("*/*/logs/*.log")]}
        return {log: log.stat().st_size for log in found if log.name in ("glance.log", "keystone.log")}

    before = logs()
    yield
    errors = []
    for log in logs():
        with log.open("rb") as f:
            f.seek(before.get(log, 0))
            errors += [f"{log}: {line}" for line in localcloud.server_errors(f.read().decode(errors="replace"))
                       if not any(p.search(line.split('"')[1]) for p in declared)]
    if errors:
        pytest.fail(f"{request.node.name}: the local cloud answered {len(errors)} server error(s) nobody injected:\n"
                    + "\n".join(errors[:10]), pytrace=False)
