"""Catalog sync end to end: two real local Glance instances as two clouds, sources on a local
HTTP server. Cold sync, no-op rerun, three-version rotation, bad checksum, crash and rerun,
shards. Each test uses its own catalog image names, so they share the two clouds."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import qemu_img
from imgpipe_dev import localcloud, sample_disk
from rangeserver import Server, serving
from typer.testing import CliRunner

from imgpipe import profiles, retry
from imgpipe.catalog import model as catalog_model
from imgpipe.cloud import clouds
from imgpipe.cloud import glance
from imgpipe.catalog import sync
from imgpipe.catalog.model import IMAGE_KEY, VERSION_KEY
from imgpipe.cli import EXIT_CODES, app
from imgpipe.errors import PartialFailure
from imgpipe.hashing import sha256_file
from imgpipe.cloud.upload import PROFILE_KEY, SOURCE_KEY

pytestmark = pytest.mark.slow
runner = CliRunner()
IMGPIPE = Path(sys.executable).parent / "imgpipe"
# Quick to give up on a stopped cloud, patient enough for the local Glance's sqlite 500s.
QUICK = retry.RetryLimits(attempts=6, initial=0.05, maximum=0.5)


@dataclass
class Clouds:
    dirs: dict[str, Path]
    config: Path


@pytest.fixture(scope="module")
def two_clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    dirs = {name: tmp_path_factory.mktemp(f"cloud-{name}") for name in ("a", "b")}
    merged: dict[str, Any] = {"clouds": {}}
    try:
        for name, state in dirs.items():
            started = localcloud.start(state, name=name)
            merged["clouds"].update(yaml.safe_load(started.clouds_yaml.read_text())["clouds"])
        config = tmp_path_factory.mktemp("config") / "clouds.yaml"
        config.write_text(yaml.safe_dump(merged))
        previous = os.environ.get("OS_CLIENT_CONFIG_FILE")
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(config)
        yield Clouds(dirs, config)
    finally:
        for state in dirs.values():
            localcloud.stop(state)
    if previous is None:
        os.environ.pop("OS_CLIENT_CONFIG_FILE", None)
    else:
        os.environ["OS_CLIENT_CONFIG_FILE"] = previous


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """v1..v4: small distinct GPT disks (compressed qcow2) and a SHA256SUMS, over HTTP."""
    root = tmp_path_factory.mktemp("mirror")
    base = sample_disk.build(root / "base.raw", size_mib=80, data_mib=2, fmt="raw")
    for n in range(1, 5):
        raw = root / f"v{n}.raw"
        qemu_img("convert", "-f", "raw", "-O", "raw", str(base), str(raw))
        with raw.open("r+b") as f:
            f.seek(70 << 20)  # inside the root partition: a different disk per version
            f.write(bytes([n]) * (256 << 10))
        qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", str(raw), str(root / f"v{n}.qcow2"))
        raw.unlink()
    base.unlink()
    (root / "SHA256SUMS").write_text("".join(f"{sha256_file(root / f'v{n}.qcow2')}  v{n}.qcow2\n"
                                             for n in range(1, 5)))
    with serving(root) as server:
        yield server


def sha(server: Server, n: int) -> str:
    return sha256_file(server.root / f"v{n}.qcow2")


def versions(server: Server, numbers: list[int], inline: bool = False) -> list[dict[str, str]]:
    """Versions with a checksum file (default) or an inline sha256."""
    out = []
    for n in numbers:
        version = {"version": f"v{n}", "source": server.url(f"v{n}.qcow2")}
        version.update({"sha256": sha(server, n)} if inline else {"checksum_url": server.url("SHA256SUMS")})
        out.append(version)
    return out


def write_catalog(path: Path, images: list[dict[str, Any]], **defaults: Any) -> Path:
    path.write_text(yaml.safe_dump({"defaults": {"clouds": ["a", "b"], **defaults}, "images": images},
                                   sort_keys=False))
    return path


def cli(*args: object) -> tuple[int, dict[str, Any], str]:
    result = runner.invoke(app, [str(a) for a in args] + ["--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}, result.stderr


def images_of(cloud: str, image: str) -> list[dict[str, Any]]:
    """Every image on a cloud carrying this catalog image's property, hidden or not."""
    connected = clouds.connect(cloud)
    found = {i["id"]: i for extra in ({}, {"os_hidden": "true"})
             for i in glance.list_images(connected, {IMAGE_KEY: image, **extra})}
    return list(found.values())


def state(cloud: str, image: str) -> dict[tuple[str, str], str]:
    """(name, version) -> 'active', 'hidden', 'deactivated' ... of imgpipe's images (with provenance)."""
    out = {}
    for i in (i for i in images_of(cloud, image) if PROFILE_KEY in i):
        status = "hidden" if i["status"] == "active" and i["os_hidden"] else i["status"]
        out[(i["name"], i[VERSION_KEY])] = status
    return out


def test_cold_sync_then_noop_then_new_versions_rotate_the_old_out(two_clouds: Clouds, mirror: Server,
                                                                   tmp_path: Path) -> None:
    cache, path = tmp_path / "cache", tmp_path / "catalog.yaml"

    def catalog(numbers: list[int]) -> Path:
        return write_catalog(path, [
            {"name": "alpha", "profiles": ["kvm", "qemu", "vmware-sparse"],
             "properties": {"os_distro": "debian", "os_version": "12"},
             "retention": {"keep": 1, "expire_after": 2, "expire": "delete"},
             "versions": versions(mirror, numbers)},
            {"name": "beta", "name_template": "{name}-{version}-{profile}", "profiles": ["kvm", "hyperv"],
             "visibility": "shared", "retention": {"keep": 1, "expire_after": 2, "expire": "deactivate"},
             "versions": versions(mirror, numbers, inline=True)},
        ], tags=["catalog"])

    # 1. cold start: 5 images x 2 clouds; each source downloaded once though both images use it
    metrics = tmp_path / "imgpipe.prom"
    mirror.requests.clear()
    code, report, err = cli("catalog", "sync", catalog([1]), "--cache-dir", cache, "--metrics-file", metrics)
    assert code == 0, err
    assert report["summary"] == {"created": 10, "copied": 0, "resigned": 0, "unchanged": 0, "failed": 0, "changed": {},
                                 "errors": 0,
                                 "uploaded_bytes": report["summary"]["uploaded_bytes"]}
    assert [r for r in mirror.requests if r[0] == "v1.qcow2"] == [("v1.qcow2", None)]
    for cloud in ("a", "b"):
        assert state(cloud, "alpha") == {("alpha-kvm", "v1"): "active", ("alpha-qemu", "v1"): "active",
                                         ("alpha-vmware-sparse", "v1"): "active"}
        assert state(cloud, "beta") == {("beta-v1-kvm", "v1"): "active", ("beta-v1-hyperv", "v1"): "active"}
    kvm = next(i for i in images_of("a", "alpha") if i["name"] == "alpha-kvm")
    assert (kvm["os_distro"], kvm["os_version"], kvm["hypervisor_type"], kvm["tags"]) == \
        ("debian", "12", "kvm", ["catalog"])
    assert (kvm[PROFILE_KEY], kvm[SOURCE_KEY], kvm["visibility"]) == ("kvm", sha(mirror, 1), "private")
    assert next(i for i in images_of("b", "beta"))["visibility"] == "shared"
    prom = metrics.read_text()
    assert 'imgpipe_catalog_published_images{catalog="catalog.yaml",shard="all"} 10.0' in prom
    assert 'imgpipe_catalog_failed_images{catalog="catalog.yaml",shard="all"} 0.0' in prom
    assert "imgpipe_catalog_uploaded_bytes" in prom and "imgpipe_catalog_duration_seconds" in prom

    # 2. a second sync is a no-op: nothing downloaded, converted or uploaded
    mirror.requests.clear()
    code, report, err = cli("catalog", "sync", path, "--cache-dir", cache)
    assert code == 0, err
    assert (report["summary"]["created"], report["summary"]["unchanged"], report["changes"]) == (0, 10, [])
    assert [r for r in mirror.requests if r[0].endswith(".qcow2")] == []

    # foreign images with the same names are never touched
    a = clouds.connect("a")
    foreign = glance.create_image(a, {"name": "alpha-kvm", "disk_format": "raw", "container_format": "bare"})
    lookalike = glance.create_image(a, {"name": "alpha-kvm", "disk_format": "raw", "container_format": "bare",
                                        IMAGE_KEY: "alpha", VERSION_KEY: "v1"})
    for image in (foreign, lookalike):
        glance.put_data(a, image["id"], b"\0" * 4096, "raw")

    # 3. v2: the plan says what will happen, and sync does exactly that
    code, planned, err = cli("catalog", "plan", catalog([1, 2]))
    assert code == 0, err
    assert sorted((x["cloud"], x["action"], x["name"]) for x in planned["actions"] if x["cloud"] == "a") == [
        ("a", "create", "alpha-kvm"), ("a", "create", "alpha-qemu"), ("a", "create", "alpha-vmware-sparse"),
        ("a", "create", "beta-v2-hyperv"), ("a", "create", "beta-v2-kvm"),
        ("a", "hide", "alpha-kvm"), ("a", "hide", "alpha-qemu"), ("a", "hide", "alpha-vmware-sparse"),
        ("a", "hide", "beta-v1-hyperv"), ("a", "hide", "beta-v1-kvm")]
    code, report, err = cli("catalog", "sync", path, "--cache-dir", cache)
    assert code == 0, err
    done = sorted((x["cloud"], x["action"], x["name"], x["version"]) for x in report["changes"])
    assert done == sorted((x["cloud"], x["action"], x["name"], x["version"]) for x in planned["actions"]
                          if x["action"] == "hide")
    assert report["summary"]["created"] == 10
    for cloud in ("a", "b"):
        assert state(cloud, "alpha")[("alpha-kvm", "v1")] == "hidden"
        assert state(cloud, "alpha")[("alpha-kvm", "v2")] == "active"

    # 4. v3: v2 hidden, v1 expired (alpha deletes, beta deactivates)
    code, report, err = cli("catalog", "sync", catalog([1, 2, 3]), "--cache-dir", cache)
    assert code == 0, err
    for cloud in ("a", "b"):
        assert state(cloud, "alpha") == {
            (name, version): status for name in ("alpha-kvm", "alpha-qemu", "alpha-vmware-sparse")
            for version, status in (("v2", "hidden"), ("v3", "active"))}
        assert state(cloud, "beta") == {
            (f"beta-{version}-{profile}", version): status for profile in ("kvm", "hyperv")
            for version, status in (("v1", "deactivated"), ("v2", "hidden"), ("v3", "active"))}
    for image in (foreign, lookalike):
        after = glance.get_image(a, image["id"])
        assert (after["status"], after["os_hidden"]) == ("active", False)


def test_wrong_checksum_is_rejected_before_any_upload(two_clouds: Clouds, mirror: Server, tmp_path: Path) -> None:
    bad = versions(mirror, [1], inline=True)
    bad[0]["sha256"] = "0" * 64
    path = write_catalog(tmp_path / "catalog.yaml", [{"name": "gamma", "profiles": ["kvm"], "versions": bad}])

    code, report, err = cli("catalog", "sync", path, "--cache-dir", tmp_path / "cache")

    assert code == EXIT_CODES[PartialFailure]
    assert f"sha256 is {sha(mirror, 1)}, the catalog expects {'0' * 64}; not used" in err
    assert report["summary"]["failed"] == 2 and report["summary"]["created"] == 0
    assert images_of("a", "gamma") == [] and images_of("b", "gamma") == []


def test_leftovers_of_an_interrupted_run_are_discarded(two_clouds: Clouds, mirror: Server, tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "catalog.yaml",
                         [{"name": "eps", "profiles": ["kvm"], "versions": versions(mirror, [1])}])
    # what a run killed between creating the image and finishing its upload leaves behind
    stuck = glance.create_image(clouds.connect("a"), {
        "name": "eps-kvm", "disk_format": "qcow2", "container_format": "bare", PROFILE_KEY: "kvm",
        SOURCE_KEY: sha(mirror, 1), IMAGE_KEY: "eps", VERSION_KEY: "v1"})

    code, report, err = cli("catalog", "sync", path, "--cache-dir", tmp_path / "cache")

    assert code == 0, err
    assert [(c["action"], c["image_id"]) for c in report["changes"]] == [("discard", stuck["id"])]
    assert state("a", "eps") == state("b", "eps") == {("eps-kvm", "v1"): "active"}


@pytest.mark.server_errors(r"^PUT /v2/images/[^/]+/file ")  # Glance answers 500 to the killed client's cut PUT
def test_a_killed_sync_is_finished_by_the_next_run(two_clouds: Clouds, mirror: Server, tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "catalog.yaml", [{"name": "zeta", "profiles": ["kvm", "vmware-sparse", "hyperv"],
                                                      "versions": versions(mirror, [2])}])
    args = [str(IMGPIPE), "catalog", "sync", str(path), "--cache-dir", str(tmp_path / "cache"), "--json"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not images_of("a", "zeta") and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # mid-publish: the first image exists, others may be half done
    assert first.wait() == -signal.SIGKILL

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=120)

    assert rerun.returncode == 0, rerun.stderr
    expected = {(f"zeta-{p}", "v2"): "active" for p in ("kvm", "vmware-sparse", "hyperv")}
    assert state("a", "zeta") == state("b", "zeta") == expected  # each exactly once: no duplicates


def test_shards_cover_the_work_once_and_rotation_runs_after_them(two_clouds: Clouds, mirror: Server,
                                                                 tmp_path: Path) -> None:
    path, cache = tmp_path / "catalog.yaml", tmp_path / "cache"
    names = ["sh-a", "sh-b", "sh-c"]

    def catalog(numbers: list[int]) -> Path:
        return write_catalog(path, [{"name": n, "profiles": ["kvm"], "retention": {"keep": 2},
                                     "versions": versions(mirror, numbers)} for n in names])

    assert cli("catalog", "sync", catalog([1]), "--cache-dir", cache)[0] == 0
    catalog([1, 2, 3])  # keep 2: v2 and v3 of three images = 6 units over 2 shards
    base = [str(IMGPIPE), "catalog", "sync", str(path), "--cache-dir", str(cache), "--json"]
    shards = [subprocess.Popen([*base, "--shard", "0/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
              subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "2"})]
    reports = []
    for shard in shards:
        out, err = shard.communicate(timeout=120)
        assert shard.returncode == 0, err
        reports.append(json.loads(out))

    created = [(i["cloud"], i["name"], i["version"]) for r in reports for i in r["images"] if i["action"] == "created"]
    assert sorted(created) == sorted((c, f"{n}-kvm", v) for c in ("a", "b") for n in names for v in ("v2", "v3"))
    assert [r["shard"] for r in reports] == ["0/2", "1/2"] and all(r["changes"] == [] for r in reports)
    assert state("a", "sh-a")[("sh-a-kvm", "v1")] == "active"  # shards leave rotation alone

    code, report, err = cli("catalog", "rotate", path, "--cache-dir", cache)

    assert code == 0, err
    assert sorted((c["cloud"], c["name"], c["version"], c["action"]) for c in report["changes"]) == \
        sorted((c, f"{n}-kvm", "v1", "hide") for c in ("a", "b") for n in names)
    assert state("b", "sh-c") == {("sh-c-kvm", "v1"): "hidden", ("sh-c-kvm", "v2"): "active",
                                  ("sh-c-kvm", "v3"): "active"}


def test_an_unreachable_cloud_delays_rotation_until_a_rerun(two_clouds: Clouds, mirror: Server,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    known = profiles.load_all()

    def run(numbers: list[int]) -> sync.SyncReport:
        write_catalog(path, [{"name": "delta", "profiles": ["kvm", "qemu"], "versions": versions(mirror, numbers)}])
        opts = sync.SyncOptions(cache_dir=tmp_path / "cache", profiles=known, limits=QUICK)
        return sync.run(catalog_model.load(path, known), path, functools.partial(clouds.connect, limits=QUICK), opts)

    assert run([1]).failures == []
    localcloud.stop(two_clouds.dirs["b"])
    try:
        first = run([1, 2])
    finally:
        localcloud.start(two_clouds.dirs["b"], name="b")

    assert sorted((i.cloud, i.name, i.action) for i in first.images) == [
        ("a", "delta-kvm", "created"), ("a", "delta-qemu", "created")]
    assert any(f.startswith("cloud b: ") for f in first.failures)
    assert "delta: not rotated: cloud b could not be reached" in first.failures
    assert state("a", "delta")[("delta-kvm", "v1")] == "active"  # v2 is not everywhere yet

    second = run([1, 2])

    assert second.failures == []
    assert sorted((i.cloud, i.action) for i in second.images) == [
        ("a", "unchanged"), ("a", "unchanged"), ("b", "created"), ("b", "created")]
    for cloud in ("a", "b"):
        assert state(cloud, "delta") == {("delta-kvm", "v1"): "hidden", ("delta-qemu", "v1"): "hidden",
                                         ("delta-kvm", "v2"): "active", ("delta-qemu", "v2"): "active"}
