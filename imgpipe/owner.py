"""Who is doing a piece of work: enough for a later run on the same host to see it died.

A pid alone is not enough (pids are reused), so an owner is host, pid and the process's
start time (/proc/<pid>/stat field 22, clock ticks after boot, plus the boot time). On the
same host that owner is dead when no process with that pid and start time exists. On
another host nothing can be told, and callers fall back to a heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger("imgpipe.owner")
OWNER_FILE = "imgpipe-owner"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.strip().rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def is_dead_here(self) -> bool:
        """True only when this owner ran on this host and its process is gone (or was reused)."""
        return self.host == socket.gethostname() and started_at(self.pid) != self.started


def me() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, started_at(pid) or "")


def started_at(pid: int) -> str | None:
    """The process's start time as seconds since the epoch, None when it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    fields = stat.rpartition(")")[2].split()  # fields 1-2 (pid, comm) end at the last ')'
    if fields[0] == "Z":
        return None  # exited, not yet reaped by its parent
    ticks = int(fields[19])  # field 22
    return f"{int(boot.split()[1]) + ticks / os.sysconf('SC_CLK_TCK'):.2f}"


def claim_dir(path: Path) -> None:
    """Mark a work directory as this process's."""
    (path / OWNER_FILE).write_text(f"{me()}\n")


def sweep(parent: Path, prefix: str) -> list[Path]:
    """Remove the work directories under parent whose owner died on this host; return them.

    Directories without an owner file (older versions, other tools) are left alone.
    """
    removed = []
    for path in parent.glob(f"{prefix}*"):
        try:
            owner = Owner.parse((path / OWNER_FILE).read_text())
        except OSError:
            continue
        if owner is not None and owner.is_dead_here():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def owned_tempdir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A temporary directory marked as this process's, made after removing the ones with the
    same prefix that dead runs left beside it (an imgpipe killed outright cleans up nothing)."""
    where = parent if parent is not None else Path(tempfile.gettempdir())
    for gone in sweep(where, prefix):
        LOG.warning("removed %s, left by a dead run", gone)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=where) as tmp:
        claim_dir(Path(tmp))
        yield Path(tmp)
