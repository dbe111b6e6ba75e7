"""catalog sync of an .xz source served over HTTP: its published checksum is the .xz's, the disk
is decompressed once into the cache, and a rerun neither downloads nor decompresses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import qemu_img
from rangeserver import serving
from typer.testing import CliRunner

from imgpipe.cli import app
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api
from imgpipe.cloud.upload import SOURCE_KEY
from imgpipe.hashing import sha256_file

pytestmark = pytest.mark.slow


def test_xz_source_synced_once(glance, sample_qcow2: Path, tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    root.mkdir()
    xz = root / "cloud.qcow2.xz"
    with xz.open("wb") as out:
        subprocess.run(["xz", "-T0", "-c", str(sample_qcow2)], stdout=out, check=True)
    sha = sha256_file(xz)
    (root / "SHA256SUMS").write_text(f"{sha}  cloud.qcow2.xz\n")
    cache, catalog = tmp_path / "cache", tmp_path / "catalog.yaml"
    with serving(root) as server:
        catalog.write_text(yaml.safe_dump({"defaults": {"clouds": ["test"]}, "images": [
            {"name": "xzcat", "profiles": ["kvm-raw"], "versions": [
                {"version": "v1", "source": server.url("cloud.qcow2.xz"),
                 "checksum_url": server.url("SHA256SUMS")}]}]}))
        result = CliRunner().invoke(app, ["catalog", "sync", str(catalog), "--cache-dir", str(cache), "--json"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["summary"]["created"] == 1
        disk = cache / "sources" / sha / "unpacked-cloud.qcow2"
        qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(sample_qcow2), str(disk))
        [image] = glance_api.list_images(clouds.connect("test"), {"name": "xzcat-kvm-raw"})
        assert (image["status"], image["disk_format"], image[SOURCE_KEY]) == ("active", "raw", sha)

        server.requests.clear()
        result = CliRunner().invoke(app, ["catalog", "sync", str(catalog), "--cache-dir", str(cache), "--json"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["summary"]["unchanged"] == 1
        assert [r for r in server.requests if r[0].endswith(".xz")] == []
