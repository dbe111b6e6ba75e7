"""A no-op catalog sync costs the same number of Glance and Keystone requests for 5 images as
for 25: each cloud is listed once (hidden images included), never once per image.

Real Keystone in front of a real Glance; the counts come from both servers' access logs.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imgpipe import profiles
from imgpipe.catalog import model, sync
from imgpipe.cloud import clouds
from imgpipe.cloud.upload import UploadRequest, upload
from imgpipe.hashing import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from imgpipe_dev import localcloud

    state = tmp_path_factory.mktemp("cost")
    cloud = localcloud.start(state, keystone=True, name="cost")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OS_CLIENT_CONFIG_FILE", str(cloud.clouds_yaml))
        yield cloud
    localcloud.stop(state)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def _published_catalog(prefix: str, count: int, source: Path, where: Path) -> Path:
    """A catalog of `count` images, each already published (as a sync would have) on cloud cost."""
    sha = sha256_file(source)
    path = where / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump({"images": [
        {"name": f"{prefix}{n}", "profiles": ["kvm"], "clouds": ["cost"],
         "versions": [{"version": "1", "source": str(source), "sha256": sha}]} for n in range(count)]}))
    loaded = model.load(path, profiles.load_all())
    kvm = profiles.load_all()["kvm"]
    cloud = clouds.connect("cost")
    for image in loaded.images:
        upload(cloud, UploadRequest(path=source, name=image.image_name("kvm", "1"), profile="kvm",
                                    disk_format=kvm.disk_format, container_format=kvm.container_format,
                                    virtual_size=64 << 20, source_sha256=sha,
                                    properties={model.IMAGE_KEY: image.name, model.VERSION_KEY: "1"}))
    return path


def _requests(log: Path, offset: int) -> int:
    """Request lines gunicorn logged after offset (it writes each just after the response)."""
    time.sleep(1.0)
    with log.open("rb") as f:
        f.seek(offset)
        return sum(1 for line in f.read().decode(errors="replace").splitlines()
                   if any(f'"{m} ' in line for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")))


def _settled_size(log: Path) -> int:
    """The log's size once the publish before it is all written: gunicorn logs a request just
    after its response, so on a loaded machine the last PATCH's line can land a moment later."""
    size = log.stat().st_size
    while True:
        time.sleep(0.5)
        now = log.stat().st_size
        if now == size:
            return size
        size = now


def _noop_sync_cost(cloud: object, catalog: Path, cache: Path) -> tuple[int, int, sync.SyncReport]:
    logs = cloud.logs  # type: ignore[attr-defined]
    before = {s: _settled_size(logs[s]) for s in ("glance", "keystone")}
    known = profiles.load_all()
    report = sync.run(model.load(catalog, known), catalog, functools.partial(clouds.connect),
                      sync.SyncOptions(cache_dir=cache, profiles=known))
    return _requests(logs["glance"], before["glance"]), _requests(logs["keystone"], before["keystone"]), report


def test_noop_sync_cost_does_not_grow_with_the_number_of_images(keystone: object, tiny: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    counts = {}
    for count in (5, 25):
        catalog = _published_catalog(f"n{count}-", count, tiny, tmp_path)
        glance, keystone_requests, report = _noop_sync_cost(keystone, catalog, tmp_path / "cache")
        assert report.failures == []
        assert report.counts() == {"unchanged": count}
        counts[count] = (glance, keystone_requests)
    with capsys.disabled():
        print(f"\nno-op catalog sync requests (glance, keystone): N=5 {counts[5]}, N=25 {counts[25]}")
    assert counts[5] == counts[25]
