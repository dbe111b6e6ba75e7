"""The check every filesystem reader's test makes: its Tree equals the host tree it was built from."""

from __future__ import annotations

import os
from pathlib import Path

from imgpipe.guest.fs import tree


def walk(guest: tree.Tree, host: Path, path: str = "/") -> int:
    """Compare every entry, symlink target and file byte; returns how many entries were compared."""
    names = sorted(guest.listdir(path))
    assert names == sorted(os.listdir(host)), path
    seen = len(names)
    for name in names:
        inside, outside = f"{path.rstrip('/')}/{name}", host / name
        node = guest.lstat(inside)
        assert node is not None, inside
        if outside.is_symlink():
            assert node == tree.Node("symlink", os.readlink(outside)), inside
        elif outside.is_dir():
            assert node.kind == "dir", inside
            seen += walk(guest, outside, inside)
        else:
            assert node.kind == "file", inside
            assert guest.read(inside, 1 << 30) == outside.read_bytes(), inside
    return seen
