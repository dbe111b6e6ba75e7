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
    fsync_path(temp)
    os.chmod(temp, 0o644)
    os.replace(temp, final)
    fsync_path(final.parent)


def discard(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
