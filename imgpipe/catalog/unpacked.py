"""A catalog source's disk image, unpacked once per compressed file and kept in the cache.

The cache entry is keyed by the sha256 of the file the distribution published (checked before
this runs), so a rerun after a failed upload, or another image built from the same source,
reuses the decompressed disk instead of decompressing it again. `download.prune` removes it
together with the download.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgpipe import locks
from imgpipe.source.inspect import DEFAULT_MAX_VIRTUAL_SIZE
from imgpipe.source.unpack import needs_unpacking, unpack

PREFIX = "unpacked-"


def disk_of(source: Path, sha256: str, cache_dir: Path, max_virtual_size: int | None = None) -> Path:
    """source itself if it is a disk image, else its disk in cache_dir/sources/SHA256/unpacked-NAME."""
    if not needs_unpacking(source):
        return source
    entry = cache_dir / "sources" / sha256
    entry.mkdir(parents=True, exist_ok=True)
    with locks.held(entry / ".lock", what=f"unpacking {source.name}"):
        done = sorted(entry.glob(f"{PREFIX}*"))
        if done:
            os.utime(done[0])  # last use, for prune()
            return done[0]
        return unpack(source, entry, max_virtual_size or DEFAULT_MAX_VIRTUAL_SIZE, prefix=PREFIX)
