"""One read of a file feeds the upload and every digest Glance will report back."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
# Chunks a hasher may lag behind the sender: bounds memory to about READ_AHEAD MiB per body.
READ_AHEAD = 8
POLL = 0.5  # how often an idle hashing thread checks that it was closed
ALGOS = ("md5", "sha256", "sha512")
# What a send hashes: sha512 is what Glance reports back (os_hash_value), sha256 the anchor.
# md5 (Glance's checksum, the slowest of the three here) is taken from Glance once sha512
# matched: equal sha512, equal bytes. Fewer CPU-seconds beside the one Glance worker.
SENT = ("sha256", "sha512")


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str  # "" until known (a send does not compute it)
    sha256: str
    sha512: str

    def get(self, algo: str) -> str | None:
        return {"md5": self.md5, "sha256": self.sha256, "sha512": self.sha512}.get(algo) or None


class ParallelDigests:
    """Digests of a byte stream, each updated on its own thread.

    hashlib releases the GIL on updates over 2047 bytes, so with a spare core the digests
    cost the feeding thread one queue put per chunk instead of three hash updates in a row.
    Each queue holds at most `depth` chunks: a slow hasher makes the feeder wait rather
    than memory grow. A hasher that fails keeps draining its queue so the feeder never
    blocks on it; the error is raised by the next update() or by finish().
    """

    def __init__(self, algos: tuple[str, ...] = ALGOS, depth: int = READ_AHEAD) -> None:
        self._hashes = {a: hashlib.new(a, usedforsecurity=a != "md5") for a in algos}
        self._queues: dict[str, queue.Queue[bytes | None]] = {a: queue.Queue(depth) for a in algos}
        self._errors: list[BaseException] = []
        self._closed = False
        self._threads = [threading.Thread(target=self._run, args=(a,), name=f"hash-{a}", daemon=True)
                         for a in algos]
        for t in self._threads:
            t.start()

    def _run(self, algo: str) -> None:
        h, q = self._hashes[algo], self._queues[algo]
        while True:
            try:
                # Polled: Ctrl-C raised in the feeder inside Condition.notify can lose the wake-up
                # of a blocked get() for good, and close() would then wait for ever.
                chunk = q.get(timeout=POLL)
            except queue.Empty:
                if self._closed:
                    return
                continue
            if chunk is None:
                return
            if self._errors:
                continue
            try:
                h.update(chunk)
            except BaseException as exc:  # handed to the feeding thread
                self._errors.append(exc)

    def update(self, chunk: bytes) -> None:
        self._raise()
        for q in self._queues.values():
            q.put(chunk)

    def close(self) -> None:
        """Stop the threads; safe to call more than once."""
        self._closed = True
        for q, t in zip(self._queues.values(), self._threads, strict=True):
            if t.is_alive():
                q.put(None)
                t.join()

    def finish(self) -> dict[str, str]:
        self.close()
        self._raise()
        return {a: h.hexdigest() for a, h in self._hashes.items()}

    def _raise(self) -> None:
        if self._errors:
            self.close()
            raise self._errors[0]


class HashingBody:
    """An upload body: iterable in 1 MiB chunks with a length, so requests sends Content-Length.

    It has no read(): urllib3 would then read it in small blocks; iterating hands it 1 MiB
    at a time. Each iteration starts from byte 0 with fresh digests, so a retry rewinds.
    The digests are computed on their own threads while the sending thread sends. `known`:
    digests an earlier read of the same bytes already gave (a signature's), not computed again.
    `before_last` runs before the final chunk leaves: the server cannot finish the upload
    before then, so whatever that hook waits for is done before the server's last save.
    """

    def __init__(self, path: Path, on_bytes: Callable[[int], None] | None = None,
                 known: dict[str, str] | None = None, algos: tuple[str, ...] = SENT,
                 before_last: Callable[[], None] | None = None) -> None:
        self.path = path
        self.before_last = before_last
        self.algos = algos
        self.size = path.stat().st_size
        self.on_bytes = on_bytes
        self.known = dict(known or {})
        self.digests: Digests | None = None

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        self.digests = None
        hasher = ParallelDigests(tuple(a for a in self.algos if a not in self.known))
        sent = 0
        try:
            with self.path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    sent += len(chunk)
                    if self.on_bytes:
                        self.on_bytes(sent)
                    if self.before_last and sent >= self.size:
                        self.before_last()
                    yield chunk
            hexes = {**self.known, **hasher.finish()}
        finally:
            hasher.close()  # an abandoned attempt (a retry) must not leave threads behind
        self.digests = Digests(sent, hexes.get("md5", ""), hexes.get("sha256", ""), hexes.get("sha512", ""))


def sha256_file(path: Path) -> str:
    return digest_file(path, ("sha256",))["sha256"]


def digest_file(path: Path, algos: tuple[str, ...]) -> dict[str, str]:
    """hashlib.file_digest is Python 3.11+ and one algorithm; the loop keeps 3.10 working."""
    digests = {a: hashlib.new(a, usedforsecurity=a != "md5") for a in algos}
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            for digest in digests.values():
                digest.update(chunk)
    return {a: d.hexdigest() for a, d in digests.items()}
