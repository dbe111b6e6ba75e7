from __future__ import annotations

import hashlib
import os
from pathlib import Path

from imgpipe.hashing import HashingBody, sha256_file


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
    assert body.digests.md5 == hashlib.md5(data).hexdigest()
    assert body.digests.sha512 == hashlib.sha512(data).hexdigest()
    assert body.digests.sha256 == sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert seen[-1] == len(data)
