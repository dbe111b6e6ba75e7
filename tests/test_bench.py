"""Smoke tests of scripts/bench.py's pure helpers (the benchmark itself only reports, never asserts)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench  # noqa: E402


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
