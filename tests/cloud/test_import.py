"""Interoperable import and stores against real local Glance servers (issue 10).

One multi-store Glance (stores fast + slow, glance-direct / copy-image / web-download on,
web-download allowed from a loopback HTTP server) and one with the image_conversion plugin,
each started once for this module (~3 s each).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultproxy import Fault, FaultProxy
from rangeserver import serving
from typer.testing import CliRunner

from imgpipe import profiles
from imgpipe.cli import app
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api
from imgpipe.cloud.import_method import ImportMethod, Placement
from imgpipe.cloud.upload import UploadRequest, upload
from imgpipe.errors import ImportFailedError, UploadError
from imgpipe.hashing import sha256_file
from imgpipe.retry import RetryLimits

pytestmark = pytest.mark.slow
FAST = RetryLimits(attempts=6, initial=0.2, maximum=2.0, total=120.0, max_retry_after=2.0)
runner = CliRunner()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory):
    """A loopback HTTP server for web-download; its port must be known before Glance starts."""
    root = tmp_path_factory.mktemp("web")
    with serving(root) as server:
        yield root, server


@pytest.fixture(scope="module")
def multistore(web, tmp_path_factory: pytest.TempPathFactory):
    from imgpipe_dev import localcloud

    state = tmp_path_factory.mktemp("multistore")
    cloud = localcloud.start(state, name="multi", stores=("fast", "slow"),
                             web_download_port=web[1].server_address[1])
    yield cloud
    localcloud.stop(state)


@pytest.fixture(scope="module")
def converting(tmp_path_factory: pytest.TempPathFactory):
    from imgpipe_dev import localcloud

    state = tmp_path_factory.mktemp("converting")
    cloud = localcloud.start(state, name="conv", convert_to="raw")
    yield cloud
    localcloud.stop(state)


@pytest.fixture
def multi(multistore, monkeypatch: pytest.MonkeyPatch) -> clouds.Cloud:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(multistore.clouds_yaml))
    return clouds.connect("multi")


def _req(path: Path, name: str, profile: str = "kvm", **kw: object) -> UploadRequest:
    p = profiles.load_all()[profile]
    return UploadRequest(path=path, name=name, profile=p.name, disk_format=p.disk_format,
                         container_format=p.container_format, virtual_size=128 << 20,
                         source_sha256=sha256_file(path), properties=dict(p.properties),
                         **kw)  # type: ignore[arg-type]


def _images(cloud: clouds.Cloud, name: str) -> list[dict]:
    return glance_api.list_images(cloud, {"name": name})


def _stores(image: dict) -> set[str]:
    return set(filter(None, image.get("stores", "").split(",")))


def _file_hashes(path: Path) -> tuple[str, str]:
    md5, sha512 = hashlib.md5(), hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha512.update(chunk)
    return md5.hexdigest(), sha512.hexdigest()


def test_doctor_shows_stores_and_import_methods(multi: clouds.Cloud) -> None:
    result = runner.invoke(app, ["doctor", "--cloud", "multi", "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["cloud multi import"]["detail"] == "methods glance-direct, copy-image, web-download"
    assert checks["cloud multi stores"]["detail"] == "fast (default, file), slow (file)"
    facts = checks["cloud multi import"]["data"]
    assert [s["id"] for s in facts["stores"]] == ["fast", "slow"]


def test_upload_into_two_stores(multi: clouds.Cloud, sample_qcow2: Path) -> None:
    result = runner.invoke(app, ["upload", str(sample_qcow2), "-p", "kvm", "--name", "two-stores",
                                 "--cloud", "multi", "--store", "fast", "--store", "slow", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"][0]["stores"] == ["fast", "slow"]
    images = _images(multi, "two-stores")
    assert [i["status"] for i in images] == ["active"]
    assert _stores(images[0]) == {"fast", "slow"}


def test_glance_direct_ends_active_and_verified(multi: clouds.Cloud, sample_qcow2: Path) -> None:
    result = upload(multi, _req(sample_qcow2, "direct", placement=Placement(ImportMethod.glance_direct)))
    image = glance_api.get_image(multi, result.image_id)
    md5, sha512 = _file_hashes(sample_qcow2)
    assert image["status"] == "active" and image["checksum"] == md5
    assert image["os_hash_value"] == sha512 and image["size"] == sample_qcow2.stat().st_size
    assert _stores(image) == {"fast"}  # the default store


def test_copy_image_completes_a_missing_store(multi: clouds.Cloud, sample_qcow2: Path) -> None:
    first = upload(multi, _req(sample_qcow2, "copied", placement=Placement(stores=("fast",))))
    assert first.stores == ["fast"]
    again = upload(multi, _req(sample_qcow2, "copied", placement=Placement(stores=("fast", "slow"))))
    assert again.status == "copied" and again.image_id == first.image_id  # no second upload
    assert _stores(glance_api.get_image(multi, first.image_id)) == {"fast", "slow"}
    assert len(_images(multi, "copied")) == 1
    third = upload(multi, _req(sample_qcow2, "copied", placement=Placement(all_stores=True)))
    assert third.status == "unchanged"


@pytest.fixture(scope="module")
def member_multistore(tmp_path_factory: pytest.TempPathFactory):
    """Stores fast + slow behind Keystone: cloud ksmulti is a member, as most users are."""
    from imgpipe_dev import localcloud

    state = tmp_path_factory.mktemp("ksmulti")
    cloud = localcloud.start(state, keystone=True, name="ksmulti", stores=("fast", "slow"))
    yield cloud
    localcloud.stop(state)


def test_copy_image_refused_to_a_member_is_explained(member_multistore, sample_qcow2: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Glance's copy_image policy is admin-only: the member's 403 says so and what to do."""
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(member_multistore.clouds_yaml))
    member = clouds.connect("ksmulti")
    first = upload(member, _req(sample_qcow2, "member-copy", placement=Placement(stores=("fast",))))
    assert first.stores == ["fast"]
    result = runner.invoke(app, ["upload", str(sample_qcow2), "-p", "kvm", "--name", "member-copy",
                                 "--cloud", "ksmulti", "--store", "fast", "--store", "slow"])
    assert result.exit_code == 22, result.output
    assert "HTTP 403: Glance lets only admins copy images by default (policy copy_image)" in result.stderr
    assert f"glance image-import {first.image_id} --import-method copy-image --stores slow" in result.stderr
    assert _stores(glance_api.get_image(member, first.image_id)) == {"fast"}


def test_unknown_store_is_refused_before_anything_is_created(multi: clouds.Cloud, sample_qcow2: Path) -> None:
    with pytest.raises(Exception, match="no store nope"):
        upload(multi, _req(sample_qcow2, "nope", placement=Placement(stores=("nope",))))
    assert _images(multi, "nope") == []


def _proxied(multistore: Any, faults: list[Fault], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """A fault proxy in front of the multi-store Glance, as cloud "proxied" in a clouds.yaml of the test's."""
    port = int(multistore.glance_url.rsplit(":", 1)[1])
    fp = FaultProxy(("127.0.0.1", port), faults)
    data = yaml.safe_load(Path(multistore.clouds_yaml).read_text())
    data["clouds"]["proxied"] = {"auth_type": "none", "auth": {"endpoint": fp.url},
                                 "image_endpoint_override": fp.url, "region_name": "RegionOne"}
    config = tmp_path / "clouds.yaml"
    config.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    return fp


def test_glance_direct_reset_mid_stage_is_retried(multistore, multi: clouds.Cloud, sample_qcow2: Path,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp = _proxied(multistore, [Fault(r"^PUT /v2/images/[^/]+/stage", "reset", after=1 << 20)], tmp_path,
                  monkeypatch)
    try:
        result = upload(clouds.connect("proxied", limits=FAST),
                        _req(sample_qcow2, "reset-stage", placement=Placement(ImportMethod.glance_direct)))
    finally:
        fp.close()
    assert fp.faults[0].fired == 1
    images = _images(multi, "reset-stage")
    assert [(i["id"], i["status"]) for i in images] == [(result.image_id, "active")]


def test_web_download_verified(multi: clouds.Cloud, web, sample_qcow2: Path) -> None:
    root, server = web
    shutil.copyfile(sample_qcow2, root / "good.qcow2")
    result = upload(multi, _req(sample_qcow2, "web-good", source_url=server.url("good.qcow2")))
    image = glance_api.get_image(multi, result.image_id)
    assert image["status"] == "active" and image["checksum"] == _file_hashes(sample_qcow2)[0]


def test_web_download_with_wrong_checksum_leaves_nothing(multi: clouds.Cloud, web, sample_qcow2: Path,
                                                         tmp_path: Path) -> None:
    root, server = web
    other = tmp_path / "other.qcow2"
    shutil.copyfile(sample_qcow2, other)
    with other.open("r+b") as f:  # same size, one byte differs far from the header
        f.seek(other.stat().st_size - 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    shutil.copyfile(other, root / "tampered.qcow2")
    # sha512 (Glance's os_hash_value) is the hash the send computes; md5 is then Glance's own
    with pytest.raises(UploadError, match="failed verification: sha512 differs"):
        upload(clouds.connect("multi", limits=FAST), _req(sample_qcow2, "web-bad",
                                                        source_url=server.url("tampered.qcow2")))
    assert _images(multi, "web-bad") == []


def test_conversion_plugin_detected(converting, sample_qcow2: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(converting.clouds_yaml))
    cloud = clouds.connect("conv")
    kvm = upload(cloud, _req(sample_qcow2, "conv-kvm", placement=Placement(ImportMethod.glance_direct)))
    assert kvm.disk_format == "raw"  # kept, with a warning
    assert "converted the image on import (qcow2 -> raw" in caplog.text
    vmdk = tmp_path / "guest.vmdk"
    import subprocess

    subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    str(sample_qcow2), str(vmdk)], check=True)
    with pytest.raises(ImportFailedError, match="vCenter needs the vmdk"):
        upload(cloud, _req(vmdk, "conv-vmware", "vmware", placement=Placement(ImportMethod.glance_direct)))
    assert _images(cloud, "conv-vmware") == []


@pytest.mark.bench
def test_times_put_vs_glance_direct_vs_web_download(multi: clouds.Cloud, web, sample_qcow2: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on speed: prints the three on the same file for the record."""
    root, server = web
    shutil.copyfile(sample_qcow2, root / "timed.qcow2")
    times = {}
    for method, extra in (("put", {}), ("glance-direct", {}), ("web-download", {"source_url": server.url("timed.qcow2")})):
        started = time.monotonic()
        upload(multi, _req(sample_qcow2, f"timed-{method}", force=True,
                           placement=Placement(ImportMethod(method)), **extra))
        times[method] = time.monotonic() - started
    with capsys.disabled():
        print(f"\n{sample_qcow2.stat().st_size >> 20} MiB:",
              ", ".join(f"{m} {t:.2f} s" for m, t in times.items()))


def test_catalog_plan_shows_a_missing_store_as_copy(multi: clouds.Cloud, sample_qcow2: Path, tmp_path: Path) -> None:
    from imgpipe.catalog import metrics, model, plan, sync

    sha = sha256_file(sample_qcow2)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "clouds": {"multi": {"stores": ["fast", "slow"], "import_method": "glance-direct"}},
        "images": [{"name": "cat", "profiles": ["kvm"], "clouds": ["multi"],
                    "versions": [{"version": "1", "source": str(sample_qcow2), "sha256": sha}]}]}))
    catalog = model.load(path, profiles.load_all())
    entry = catalog.images[0]
    assert catalog.placement(entry, "multi") == Placement(ImportMethod.glance_direct, ("fast", "slow"))
    req = _req(sample_qcow2, entry.image_name("kvm", "1"), placement=Placement(stores=("fast",)))
    req.properties.update({model.IMAGE_KEY: "cat", model.VERSION_KEY: "1"})
    first = upload(multi, req)
    actions, failures = plan.preview(catalog, lambda name: clouds.connect(name), rotate=False)
    assert failures == []
    assert [(a.action, a.stores, a.image_id) for a in actions] == [("copy", ["slow"], first.image_id)]
    stale = plan.Survey(clouds={"multi": multi}, states={"cat": {"multi": [glance_api.get_image(multi, first.image_id)]}})
    synced = sync.run(catalog, path, lambda name: clouds.connect(name),
                      sync.SyncOptions(profiles=profiles.load_all(), cache_dir=tmp_path / "cache"))
    assert synced.failures == []
    assert [(a.action, a.image_id) for a in synced.images] == [("copied", first.image_id)]
    assert synced.to_dict()["summary"]["copied"] == 1
    assert _stores(glance_api.get_image(multi, first.image_id)) == {"fast", "slow"}
    metrics.write(tmp_path / "sync.prom", synced)
    assert 'imgpipe_catalog_copied_images{catalog="catalog.yaml",shard="all"} 1.0' in \
        (tmp_path / "sync.prom").read_text()
    report = sync.SyncReport(str(path), None)
    fresh = plan.Survey(clouds={"multi": multi}, states={"cat": {"multi": [glance_api.get_image(multi, first.image_id)]}})
    assert sync._copy(actions[0], entry, fresh, report).action == "unchanged"  # nothing left to copy
    assert sync._copy(actions[0], entry, stale, report).action == "unchanged"  # the image has it by now
    assert report.failures == []


def test_publish_completes_a_missing_store_of_an_unchanged_image(multi: clouds.Cloud, sample_qcow2: Path,
                                                                 tmp_path: Path) -> None:
    from imgpipe.conversion.convert import Options
    from imgpipe.pipeline.publish import PublishRequest, publish

    def run(*stores: str) -> list[tuple[str, str, list[str]]]:
        req = PublishRequest(source=sample_qcow2, profiles=profiles.select(["kvm"], profiles.load_all()),
                             name="pub-stores", placement=Placement(stores=stores))
        return [(r.status, r.image_id, r.stores) for r in publish(req, [multi], Options(out_dir=tmp_path)).results]

    [(status, image_id, stores)] = run("fast")
    assert (status, stores) == ("created", ["fast"])
    assert run("fast", "slow") == [("copied", image_id, ["fast", "slow"])]
    assert _stores(glance_api.get_image(multi, image_id)) == {"fast", "slow"}
    assert run("fast", "slow") == [("unchanged", image_id, ["fast", "slow"])]


def _info_reads(log: Path, offset: int) -> list[str]:
    time.sleep(1.0)  # gunicorn writes a request's line just after its response
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    return [line.split('"')[1].split()[1] for line in lines if '"GET /v2/info/' in line]


def test_stores_are_discovered_once_per_run_and_only_what_upload_needs(multistore, multi: clouds.Cloud,
                                                                        sample_qcow2: Path) -> None:
    """Two uploads into stores on one Cloud: one GET /v2/info/stores and one /v2/info/import, never
    the store details or the quota, which only doctor shows."""
    log = multistore.logs["glance"]
    before = log.stat().st_size
    for name in ("once-a", "once-b"):
        upload(multi, _req(sample_qcow2, name, force=True, placement=Placement(stores=("fast", "slow"))))
    assert sorted(_info_reads(log, before)) == ["/v2/info/import", "/v2/info/stores"]


def test_plan_asks_a_failing_discovery_once_per_cloud(multistore, multi: clouds.Cloud, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--all-stores on a cloud whose /v2/info/stores fails: one retried read and one failure for
    the whole plan, not one per image and profile."""
    import subprocess

    from imgpipe.catalog import model, plan

    tiny = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tiny), "64M"], check=True)
    sha = sha256_file(tiny)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "clouds": {"proxied": {"all_stores": True}},
        "images": [{"name": f"fail{n}", "profiles": ["kvm", "qemu"], "clouds": ["proxied"],
                    "versions": [{"version": "1", "source": str(tiny), "sha256": sha}]} for n in range(3)]}))
    catalog = model.load(path, profiles.load_all())
    for image in catalog.images:
        for profile in image.profiles:
            req = _req(tiny, image.image_name(profile, "1"), profile, placement=Placement(stores=("fast",)))
            req.properties.update({model.IMAGE_KEY: image.name, model.VERSION_KEY: "1"})
            upload(multi, req)
    fp = _proxied(multistore, [Fault(r"^GET /v2/info/stores", "503", times=1000)], tmp_path, monkeypatch)
    quick = RetryLimits(attempts=2, initial=0.05, maximum=0.1)
    try:
        actions, failures = plan.preview(catalog, lambda name: clouds.connect(name, limits=quick), rotate=False)
    finally:
        fp.close()
    assert [r for r in fp.requests if "/v2/info/stores" in r] == ["GET /v2/info/stores"] * 2
    assert len(failures) == 1 and "GET /v2/info/stores: gave up after 2 attempts" in failures[0]
    assert sorted(a.action for a in actions) == ["unchanged"] * 6
