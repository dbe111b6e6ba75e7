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


def test_errors_keep_their_fields_when_renamed(tmp_path: Path) -> None:
    """A boot-check of an unpacked OVA's disk names the OVA and keeps its serial-log tail."""
    from imgpipe.errors import BootCheckError

    src, disk = tmp_path / "vendor.ova", tmp_path / "work" / "disk1.vmdk"
    with pytest.raises(BootCheckError) as caught, unpack.named_as(src, disk):
        raise BootCheckError(f"{disk}: no login prompt within 60 s", tail="[    0.1] Kernel panic")
    assert str(caught.value) == f"{src}: no login prompt within 60 s"
    assert caught.value.tail == "[    0.1] Kernel panic"
