"""Smoke tests of imgpipe_dev.bench's pure helpers (the benchmark itself only reports, never asserts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from imgpipe_dev import bench, localcloud

from imgpipe.cloud import glance as glance_api


def test_targets_are_judged_in_their_direction() -> None:
    assert bench.meets(1.04, ("<=", 1.05)) is True
    assert bench.meets(1.06, ("<=", 1.05)) is False
    assert bench.meets(0.95, (">=", 0.90)) is True
    assert bench.meets(150.0, ("<", 200.0)) is True
    assert bench.meets(None, ("<=", 1.0)) is None


def test_throughput_row_uses_medians_of_good_samples() -> None:
    row = bench.Row("upload", "upload", "throughput", (">=", 0.9), payload_bytes=200_000_000)
    row.imgpipe = [bench.Sample(2.0), bench.Sample(4.0), bench.Sample(1.0, ok=False, error="x")]
    row.baseline = [bench.Sample(2.0), bench.Sample(2.0)]
    mine, base = row.medians()
    assert (mine, base) == (75.0, 100.0)
    assert row.ratio() == 0.75
    assert row.to_dict()["met"] is False
    assert row.errors() == ["x"]


def test_baseline_commands_mirror_imgpipe_options(tmp_path: Path) -> None:
    env = bench.Env(Path("imgpipe"), Path("/src/a,b.qcow2"), tmp_path, {}, window=(1024, 4096))
    (argv,), _ = bench.baseline_convert(env, "rootfs", tmp_path)
    assert argv[:3] == ["qemu-img", "convert", "--image-opts"]
    assert argv[3] == ("driver=raw,offset=1024,size=4096,file.driver=qcow2,"
                       "file.file.filename=/src/a,,b.qcow2")
    (vpc, tar), outputs = bench.baseline_convert(env, "xen", tmp_path)
    assert vpc == ["qemu-img", "convert", "-f", "qcow2", "/src/a,b.qcow2", "-O", "vpc",
                   "-o", "force_size=on,subformat=dynamic", str(tmp_path / "0.vhd")]
    assert tar[:2] == ["tar", "czf"] and outputs[0].name.endswith(".tgz")


def test_source_cache_is_keyed_by_parameters() -> None:
    a, b = bench.source_path(512, 64), bench.source_path(2048, 200)
    assert a != b and "512M-64M" in a.name and a.parent == bench.BENCH_DIR


def test_keystone_request_comes_from_clouds_yaml_and_stays_private(tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text('clouds:\n  bench:\n    auth:\n      auth_url: "http://127.0.0.1:5000/v3/"\n'
                      '      username: "member"\n      password: "s3cret"\n      project_name: "demo"\n'
                      '      user_domain_name: "Default"\n      project_domain_name: "Default"\n')
    keystone = bench.Keystone.of(clouds, "bench", tmp_path)
    assert keystone.url == "http://127.0.0.1:5000/v3"
    assert keystone.request.stat().st_mode & 0o777 == 0o600
    auth = json.loads(keystone.request.read_text())["auth"]
    assert auth["identity"]["password"]["user"] == {"name": "member", "password": "s3cret",
                                                    "domain": {"name": "Default"}}
    assert auth["scope"]["project"] == {"name": "demo", "domain": {"name": "Default"}}


def test_upload_phases_come_from_imgpipe_timing(tmp_path: Path) -> None:
    """Overlapping spans each count; start is process start to the command, exit the end of
    the last span to the end of the process; curl's three requests print beside them."""
    spans = tmp_path / "timing.jsonl"
    spans.write_text("".join(json.dumps(s) + "\n" for s in [
        {"phase": "command", "start": 100.3, "end": 100.3},
        {"phase": "auth", "start": 100.3, "end": 100.6},
        {"phase": "inspect", "start": 100.35, "end": 100.45},
        {"phase": "data", "start": 100.7, "end": 102.7},
        {"phase": "verify", "start": 102.7, "end": 102.8}]))
    got = bench.phase_seconds(spans, began=100.0, total=3.0)
    assert {k: round(v, 2) for k, v in got.items()} == {"start": 0.3, "auth": 0.3, "inspect": 0.1,
                                                        "data": 2.0, "verify": 0.1, "exit": 0.2}
    curl = [bench.Sample(2.0, extra={"token_seconds": 0.1, "create_seconds": 0.2, "put_seconds": 1.7})]
    text = bench.breakdown([got], curl)
    assert "start 0.30, auth 0.30, inspect 0.10, data 2.00, verify 0.10, exit 0.20" in text
    assert text.endswith("curl: token 0.10, create 0.20, put 1.70")


def test_size_row_compares_the_big_disk_and_scales_by_the_small_one() -> None:
    case = next(c for c in bench.CONVERT_CASES if c.key == "convert-kvm")
    got = {(case.key, 20480): ([bench.Sample(1.1)], [bench.Sample(0.6)]),
           (case.key, 2048): ([bench.Sample(1.0)], [bench.Sample(0.5)])}
    row = bench.size_row(case, got, 20480, 2048)
    assert row.key == "size-kvm" and "20 GiB" in row.title
    assert round(row.ratio(), 3) == round(1.1 / 0.6, 3)
    assert row.scaling is not None
    assert round(row.scaling["imgpipe_big_over_small"], 3) == 1.1
    assert round(row.scaling["baseline_big_over_small"], 3) == 1.2
    assert "imgpipe 1.10x, qemu-img 1.20x" in row.note


@pytest.mark.slow
def test_bench_glance_goes_through_imgpipes_client(tmp_path: Path) -> None:
    """The bench's untimed calls on a real Glance of its own (emptying it would disturb the
    session's): what it checks and deletes is what imgpipe's client sees."""
    state = tmp_path / "cloud"
    cloud = localcloud.start(state, name="bench-test")
    try:
        environ = dict(os.environ)
        client = bench.Glance.connect(cloud.glance_url + "/", cloud.clouds_yaml, "bench-test")
        assert dict(os.environ) == environ and client.url == cloud.glance_url
        ids = [glance_api.create_image(client.cloud, {"name": f"bench-{i}", "disk_format": "raw",
                                                      "container_format": "bare"})["id"] for i in range(3)]
        assert [client.status(i) for i in ids] == ["queued"] * 3
        assert client.delete_all() == 3
        assert [client.status(i) for i in ids] == [None] * 3
        assert client.delete_all() == 0
    finally:
        localcloud.stop(state)
