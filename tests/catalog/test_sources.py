"""Sources are verified before use, downloaded once into a hash-keyed cache, and resumed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from rangeserver import serving

from imgpipe import retry
from imgpipe.catalog import download as sources
from imgpipe.catalog.model import Version
from imgpipe.errors import ChecksumError, SourceError

FAST = retry.RetryLimits(attempts=3, initial=0.01, maximum=0.02)
DATA = os.urandom(3 * 1024 * 1024 + 7)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "disk.qcow2").write_bytes(DATA)
    with serving(root) as srv:
        yield srv


def version(source: str, sha256: str | None = SHA, checksum_url: str | None = None) -> Version:
    return Version(version="1", source=source, sha256=sha256, checksum_url=checksum_url)


def test_download_lands_in_the_cache_once(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    got = sources.fetch(version(server.url("disk.qcow2")), SHA, cache, FAST)

    assert got == cache / "sources" / SHA / "disk.qcow2"
    assert got.read_bytes() == DATA
    assert sources.fetch(version(server.url("disk.qcow2")), SHA, cache, FAST) == got
    assert server.requests == [("disk.qcow2", None)]


def test_a_cut_download_resumes_with_range(server, tmp_path: Path) -> None:
    server.cut["disk.qcow2"] = 1024 * 1024

    got = sources.fetch(version(server.url("disk.qcow2")), SHA, tmp_path / "cache", FAST)

    assert got.read_bytes() == DATA
    assert server.requests == [("disk.qcow2", None), ("disk.qcow2", "bytes=1048576-")]


def test_a_killed_runs_partial_file_is_continued(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    part = cache / "sources" / SHA / ".disk.qcow2.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:2_000_000])  # what a run killed mid-download leaves behind

    got = sources.fetch(version(server.url("disk.qcow2")), SHA, cache, FAST)

    assert got.read_bytes() == DATA and not part.exists()
    assert server.requests == [("disk.qcow2", "bytes=2000000-")]


def test_a_stale_partial_file_is_fetched_again_from_scratch(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    part = cache / "sources" / SHA / ".disk.qcow2.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 2_000_000)  # from an older file at the same URL

    assert sources.fetch(version(server.url("disk.qcow2")), SHA, cache, FAST).read_bytes() == DATA
    assert server.requests == [("disk.qcow2", "bytes=2000000-"), ("disk.qcow2", None)]


def test_wrong_checksum_is_rejected_and_nothing_is_kept(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=f"disk.qcow2: sha256 is {SHA}, the catalog expects {wrong}"):
        sources.fetch(version(server.url("disk.qcow2"), wrong), wrong, cache, FAST)
    assert [p.name for p in (cache / "sources" / wrong).iterdir()] == [".lock"]


def test_local_sources_are_verified_in_place(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    path.write_bytes(DATA)
    assert sources.fetch(version(str(path)), SHA, tmp_path / "cache", FAST) == path
    with pytest.raises(ChecksumError):
        sources.fetch(version(str(path)), "1" * 64, tmp_path / "cache", FAST)
    with pytest.raises(SourceError, match="no such file"):
        sources.fetch(version(str(tmp_path / "gone.qcow2")), SHA, tmp_path / "cache", FAST)


def test_http_errors_are_source_errors(server, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        sources.fetch(version(server.url("missing.qcow2")), SHA, tmp_path / "cache", FAST)


def test_checksum_files_gnu_and_bsd_style(server, tmp_path: Path) -> None:
    (server.root / "SHA256SUMS").write_text(f"{'1' * 64}  other.img\n{SHA} *disk.qcow2\n")
    (server.root / "CHECKSUM").write_text(f"# signed\nSHA256 (disk.qcow2) = {SHA.upper()}\n")
    checksums = sources.Checksums(FAST)
    url = server.url("disk.qcow2")

    assert checksums.expected(version(url, None, server.url("SHA256SUMS"))) == SHA
    assert checksums.expected(version(url + "?x=1", None, server.url("SHA256SUMS"))) == SHA
    assert checksums.expected(version(url, None, server.url("CHECKSUM"))) == SHA
    with pytest.raises(ChecksumError, match="no sha256 listed for nope.img"):
        checksums.expected(version(server.url("nope.img"), None, server.url("SHA256SUMS")))
    assert [r for r in server.requests if r[0] == "SHA256SUMS"] == [("SHA256SUMS", None)]


def test_prune_keeps_what_the_catalog_uses_and_recent_files(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sources.fetch(version(server.url("disk.qcow2")), SHA, cache, FAST)
    old = cache / "sources" / ("e" * 64)
    old.mkdir()
    (old / "old.img").write_bytes(b"old")
    os.utime(old / "old.img", (0, 0))
    recent = cache / "sources" / ("f" * 64)
    recent.mkdir()
    (recent / "recent.img").write_bytes(b"recent")
    os.utime(cache / "sources" / SHA / "disk.qcow2", (0, 0))

    assert sources.prune(cache, {SHA}, unused_for=3600) == [old]
    assert not (old / "old.img").exists() and (recent / "recent.img").exists()
    assert (cache / "sources" / SHA / "disk.qcow2").exists()
