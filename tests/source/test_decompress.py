"""Compressed sources: each format (made by its own CLI) converts to the same disk; bombs stop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_invoke import imgpipe
from conftest import qemu_img

from imgpipe import errors, profiles
from imgpipe.cli.base import EXIT_CODES
from imgpipe.conversion.convert import Options
from imgpipe.pipeline.convert import convert_source
from imgpipe.source import decompress

COMPRESSORS = {"xz": ["xz", "-T0", "-c"], "gz": ["gzip", "-c"], "bz2": ["bzip2", "-c"],
               "zst": ["zstd", "-q", "-c"]}


def _compress(src: Path, dest: Path, tool: list[str]) -> Path:
    with dest.open("wb") as out:
        subprocess.run([*tool, str(src)], stdout=out, check=True)
    return dest


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_each_format_converts_to_the_same_disk(sample_qcow2: Path, tmp_path: Path, suffix: str) -> None:
    src = _compress(sample_qcow2, tmp_path / f"guest.qcow2.{suffix}", COMPRESSORS[suffix])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    [out] = convert_source(src, profiles.select(["kvm-raw"], profiles.load_all()),
                           Options(out_dir=out_dir, verify=True))
    qemu_img("compare", "-f", "qcow2", "-F", "raw", str(sample_qcow2), str(out.path))
    assert [p.name for p in out_dir.iterdir()] == ["guest.raw"]  # the decompressed copy is gone


def test_detected_by_content_not_name(sample_raw: Path, tmp_path: Path) -> None:
    src = _compress(sample_raw, tmp_path / "disk.img", COMPRESSORS["zst"])
    assert decompress.codec_of(src).name == "zstd"
    [out] = convert_source(src, profiles.select(["kvm"], profiles.load_all()), Options(out_dir=tmp_path))
    qemu_img("compare", "-f", "raw", "-F", "qcow2", str(sample_raw), str(out.path))


def test_decompressed_raw_is_sparse(sample_raw: Path, tmp_path: Path) -> None:
    src = _compress(sample_raw, tmp_path / "guest.raw.xz", COMPRESSORS["xz"])
    dest = tmp_path / "plain.raw"
    decompress.decompress(src, decompress.codec_of(src), dest, 1 << 30)
    assert dest.stat().st_size == sample_raw.stat().st_size
    assert dest.stat().st_blocks * 512 < dest.stat().st_size // 2
    qemu_img("compare", "-f", "raw", "-F", "raw", str(sample_raw), str(dest))


def test_bomb_refused_and_nothing_left(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.raw"
    with zeros.open("wb") as f:
        f.truncate(256 << 20)
    src = _compress(zeros, tmp_path / "small.raw.xz", ["xz", "-1", "-T0", "-c"])
    zeros.unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, stderr = imgpipe("convert", src, "-p", "kvm", "--output-dir", out_dir, "--max-virtual-size", "64M")
    assert code == EXIT_CODES[errors.ImageTooLargeError], stderr
    assert f"{src}: decompresses to more than" in stderr
    assert list(out_dir.iterdir()) == []


def test_no_space_while_decompressing_leaves_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        data = tmp_path / "data.raw"
        data.write_bytes(bytes(range(256)) * (64 << 12))  # 64 MiB that is not zeros
        src = _compress(data, tmp_path / "data.raw.zst", COMPRESSORS["zst"])
        code, _, stderr = imgpipe("convert", src, "-p", "kvm", "--output-dir", small)
        assert code == EXIT_CODES[errors.NoSpaceError], stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_corrupt_stream_refused(sample_qcow2: Path, tmp_path: Path) -> None:
    whole = _compress(sample_qcow2, tmp_path / "whole.xz", COMPRESSORS["xz"]).read_bytes()
    src = tmp_path / "cut.qcow2.xz"
    src.write_bytes(whole[: len(whole) // 2])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, stderr = imgpipe("convert", src, "-p", "kvm", "--output-dir", out_dir)
    assert code == EXIT_CODES[errors.UnsafeImageError], stderr
    assert f"{src}: corrupt xz data" in stderr
    assert list(out_dir.iterdir()) == []
