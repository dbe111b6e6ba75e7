"""A compressed catalog source is decompressed once into its cache entry and reused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import qemu_img

from imgpipe.source import unpack
from imgpipe.catalog.download import prune
from imgpipe.hashing import sha256_file
from imgpipe.source import decompress


def test_decompressed_once_per_sha256(sample_qcow2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "debian.qcow2.zst"
    subprocess.run(["zstd", "-q", str(sample_qcow2), "-o", str(src)], check=True)
    sha = sha256_file(src)
    cache = tmp_path / "cache"
    disk = unpack.cached(src, sha, cache)
    assert disk == cache / "sources" / sha / "unpacked-debian.qcow2"
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(sample_qcow2), str(disk))

    def refuse(*args: object) -> None:
        raise AssertionError("decompressed again")

    monkeypatch.setattr(decompress, "decompress", refuse)
    assert unpack.cached(src, sha, cache) == disk
    assert unpack.cached(sample_qcow2, "0" * 64, cache) == sample_qcow2  # a plain disk is used in place
    assert prune(cache, keep=set(), unused_for=-1) == [cache / "sources" / sha]
    assert not disk.exists()
