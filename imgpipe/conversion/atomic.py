"""Outputs appear complete or not at all: temp name beside the target, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_beside(final: Path) -> Path:
    """A fresh hidden temp path in final's directory, so the rename cannot cross filesystems."""
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    return Path(name)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(temp: Path, final: Path) -> None:
    """mkstemp made temp 0600: give the output the mode open() would have (0666 less the umask)."""
    fsync_path(temp)
    os.chmod(temp, 0o666 & ~umask())
    os.replace(temp, final)
    fsync_path(final.parent)


def umask() -> int:
    """The process umask, read without setting it (os.umask would race other threads)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    current = os.umask(0o022)  # kernels before 4.7: set and restore
    os.umask(current)
    return current


def discard(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
