"""fcntl file locks: two scheduled runs must not publish to or rotate the same cloud at once.

The kernel drops a flock when its holder dies, so a crashed run never leaves a stale lock.
Shards of one sync share a cloud (shared lock) while rotation needs it alone (exclusive).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from imgpipe.errors import LockedError


@contextmanager
def held(path: Path, *, shared: bool = False, wait: bool = True, what: str) -> Iterator[None]:
    """Hold a lock on `path`; with wait=False, LockedError at once if someone else has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise LockedError(f"{path}: another imgpipe run holds the lock for {what}; "
                              "try again when it has finished") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def clouds(state_dir: Path, names: list[str], shard: str | None) -> Iterator[None]:
    """Lock every cloud a run touches, in a fixed order so runs cannot deadlock.

    An unsharded sync or a rotation holds each cloud exclusively; a shard holds it shared
    plus its own shard lock exclusively, so shards run side by side but never twice.
    """
    with ExitStack() as stack:
        for name in sorted(set(names)):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            what = f"cloud {name}"
            stack.enter_context(held(state_dir / "locks" / f"{safe}.lock", shared=shard is not None,
                                     wait=False, what=what))
            if shard is not None:
                stack.enter_context(held(state_dir / "locks" / f"{safe}.shard-{shard.replace('/', '-of-')}.lock",
                                         wait=False, what=f"{what} (shard {shard})"))
        yield
