"""clouds.yaml/OS_* loading and TLS settings, against the real openstack.config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgpipe.cloud import clouds
from imgpipe.errors import CloudConfigError

pytestmark = pytest.mark.slow


def test_tls_verified_by_default_and_overrides(glance, tmp_path: Path) -> None:
    assert clouds.connect("test").session.verify is True
    assert clouds.connect("test", insecure=True).session.verify is False
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    assert clouds.connect("test", cacert=str(bundle)).session.verify == str(bundle)


def test_os_cloud_variable(glance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_CLOUD", "test")
    assert clouds.connect().endpoint == glance.glance_url


def test_unknown_cloud_is_a_config_error(glance) -> None:
    with pytest.raises(CloudConfigError, match="cloud nope: Cloud nope was not found"):
        clouds.connect("nope")


def test_doctor_reports_glance_formats(glance) -> None:
    import json

    from typer.testing import CliRunner

    from imgpipe.cli import app

    result = CliRunner().invoke(app, ["doctor", "--cloud", "test", "--json"])
    assert result.exit_code == 0, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["qemu-img"]["ok"] and checks["profiles"]["ok"]
    glance_check = checks["cloud test glance"]
    assert glance_check["ok"] and "vmdk" in glance_check["detail"] and "ovf" in glance_check["detail"]
    key_manager = checks["cloud test key manager"]  # noauth: no catalog, so no signed images (not a failure)
    assert key_manager["ok"] and key_manager["detail"].startswith("none") and not key_manager["data"]["certificates"]


def test_clouds_yaml_declares_metadata_paths(glance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """imgpipe's own key under a cloud, read through openstack.config; a wrong one is refused
    before any request, naming the file."""
    import os

    import yaml

    config = yaml.safe_load(Path(os.environ["OS_CLIENT_CONFIG_FILE"]).read_text())
    test = config["clouds"]["test"]
    config["clouds"] = {"drive": {**test, "imgpipe": {"metadata": ["config-drive"]}}, "plain": test,
                        "wrong": {**test, "imgpipe": {"metadata": "config-drive"}}}
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    assert clouds.connect("drive").metadata_paths == frozenset({"config-drive"})
    assert clouds.connect("plain").metadata_paths is None
    with pytest.raises(CloudConfigError, match=rf"^cloud wrong: {path}: imgpipe.metadata must list one or more of "
                                               "config-drive, metadata-service, not 'config-drive'$"):
        clouds.connect("wrong")
