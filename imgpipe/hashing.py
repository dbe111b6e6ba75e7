"""One read of a file feeds the upload and every digest Glance will report back."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha256: str
    sha512: str

    def get(self, algo: str) -> str | None:
        return {"md5": self.md5, "sha256": self.sha256, "sha512": self.sha512}.get(algo)


class HashingBody:
    """An upload body: iterable in 1 MiB chunks with a length, so requests sends Content-Length.

    It has no read(): urllib3 would then read it in small blocks; iterating hands it 1 MiB
    at a time. Each iteration starts from byte 0 with fresh digests, so a retry rewinds.
    """

    def __init__(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.on_bytes = on_bytes
        self.digests: Digests | None = None

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        self.digests = None
        md5, sha256, sha512 = hashlib.md5(usedforsecurity=False), hashlib.sha256(), hashlib.sha512()
        sent = 0
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK):
                md5.update(chunk)
                sha256.update(chunk)
                sha512.update(chunk)
                sent += len(chunk)
                if self.on_bytes:
                    self.on_bytes(sent)
                yield chunk
        self.digests = Digests(sent, md5.hexdigest(), sha256.hexdigest(), sha512.hexdigest())


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
