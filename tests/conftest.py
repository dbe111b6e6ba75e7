"""Shared fixtures: real disk images built with sfdisk/mkfs/qemu-img, never mocked."""

from __future__ import annotations

import json
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
