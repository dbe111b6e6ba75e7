from __future__ import annotations

import hashlib
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from imgpipe.hashing import ALGOS, CHUNK, READ_AHEAD, HashingBody, ParallelDigests, sha256_file


def test_body_hashes_what_it_sends_and_rewinds(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    seen: list[int] = []
    body = HashingBody(path, seen.append)
    assert len(body) == len(data)
    partial = iter(body)
    next(partial)  # a failed attempt that sent only the first chunk
    assert b"".join(body) == data  # the retry starts again from byte 0
    assert body.digests is not None
    assert body.digests.md5 == ""  # Glance's own, taken once sha512 matched (cloud.upload._verify)
    assert body.digests.sha512 == hashlib.sha512(data).hexdigest()
    assert body.digests.sha256 == sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert seen[-1] == len(data)


def test_body_takes_known_digests_and_hashes_the_rest(tmp_path: Path) -> None:
    """A signed upload's sha256 comes from the signing read: the send hashes sha512 only."""
    data = os.urandom((1 << 20) + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    body = HashingBody(path, known={"sha256": "from-the-signing-read"})
    assert b"".join(body) == data and body.digests is not None
    assert body.digests.sha256 == "from-the-signing-read"
    assert (body.digests.md5, body.digests.sha512) == ("", hashlib.sha512(data).hexdigest())


def test_parallel_digests_equal_hashlib_on_real_data(sample_qcow2: Path) -> None:
    data = sample_qcow2.read_bytes()
    hasher = ParallelDigests(depth=2)
    for start in range(0, len(data), CHUNK):
        hasher.update(data[start:start + CHUNK])
    assert hasher.finish() == {a: hashlib.new(a, data).hexdigest() for a in ALGOS}


def test_hasher_error_reaches_the_feeder() -> None:
    hasher = ParallelDigests()
    hasher.update("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        for _ in range(100):  # raised by a later update or, at the latest, by finish
            hasher.update(b"x" * 4096)
        hasher.finish()
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("hash-"))


def test_before_last_runs_once_before_the_final_chunk_of_each_pass(tmp_path: Path) -> None:
    """The upload quiets its heartbeat there: Glance cannot finish before the last bytes arrive."""
    data = os.urandom(2 * CHUNK + 5)
    path = tmp_path / "blob"
    path.write_bytes(data)
    events: list[str] = []
    body = HashingBody(path, lambda sent: events.append(f"read {sent}"), before_last=lambda: events.append("quiet"))
    for _ in range(2):  # a retry passes again
        got = []
        for chunk in body:
            got.append(chunk)
            events.append("sent")
        assert b"".join(got) == data
    one_pass = [f"read {CHUNK}", "sent", f"read {2 * CHUNK}", "sent", f"read {len(data)}", "quiet", "sent"]
    assert events == one_pass * 2


def test_read_ahead_bounds_memory(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with path.open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(CHUNK))
    tracemalloc.start()
    try:
        for _ in HashingBody(path):
            pass  # a fast sender: only the hashers' queues can hold chunks back
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (3 * READ_AHEAD + 8) * CHUNK < 64 * CHUNK
