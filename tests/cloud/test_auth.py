"""Real Keystone in front of real Glance: a member publishes; bad credentials fail cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api

pytestmark = pytest.mark.slow
IMGPIPE = [sys.executable, "-m", "imgpipe.cli"]


@pytest.fixture(scope="module")
def keystone(tmp_path_factory: pytest.TempPathFactory):
    from imgpipe_dev import localcloud

    state = tmp_path_factory.mktemp("keystone")
    cloud = localcloud.start(state, keystone=True, name="ks")
    config = yaml.safe_load(cloud.clouds_yaml.read_text())
    wrong = dict(config["clouds"]["ks"], auth=dict(config["clouds"]["ks"]["auth"], password="Wr0ng-s3cret-pw"))
    config["clouds"]["ks-wrong"] = wrong
    path = state / "all-clouds.yaml"
    path.write_text(yaml.safe_dump(config))
    yield cloud, path, config["clouds"]["ks"]["auth"]["password"]
    localcloud.stop(state)


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(config)}
    return subprocess.run([*IMGPIPE, *args], capture_output=True, text=True, env=env, timeout=300)


def test_member_uploads_through_keystone(keystone, sample_qcow2: Path, tmp_path: Path) -> None:
    cloud, config, password = keystone
    out = tmp_path / "guest.qcow2"
    out.write_bytes(sample_qcow2.read_bytes())
    proc = _run(config, "-v", "upload", str(out), "-p", "kvm", "--name", "member-kvm", "--cloud", "ks", "--json")
    assert proc.returncode == 0, proc.stderr
    [image] = json.loads(proc.stdout)["images"]
    assert image["status"] == "created"
    assert password not in proc.stdout + proc.stderr
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(config)
    try:
        admin = clouds.connect("ks-admin")
        seen = glance_api.get_image(admin, image["image_id"])
    finally:
        del os.environ["OS_CLIENT_CONFIG_FILE"]
    assert seen["status"] == "active" and seen["owner"]  # owned by the member's project
    assert seen["hypervisor_type"] == "kvm"


def test_wrong_password_is_a_clear_error(keystone, sample_qcow2: Path) -> None:
    _, config, _ = keystone
    proc = _run(config, "upload", str(sample_qcow2), "-p", "kvm", "--name", "x", "--cloud", "ks-wrong")
    from imgpipe.cli import EXIT_CODES
    from imgpipe.errors import AuthError

    assert proc.returncode == EXIT_CODES[AuthError], proc.stderr
    assert proc.stderr.strip() == "imgpipe: error: cloud ks-wrong: Keystone refused the credentials (HTTP 401)"
    assert "Wr0ng-s3cret-pw" not in proc.stdout + proc.stderr


def test_unknown_cloud(keystone, sample_qcow2: Path) -> None:
    _, config, _ = keystone
    proc = _run(config, "doctor", "--cloud", "nope")
    assert proc.returncode != 0 and "cloud nope" in proc.stderr
