"""Path resolution inside a guest filesystem, done here because the readers do not follow
a final symlink (debugfs `cat` prints the link, not its target) and must never leave the guest."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Protocol

_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS


@dataclass(frozen=True)
class Node:
    kind: str  # "file", "dir", "symlink", "other"
    target: str = ""


class Tree(Protocol):
    """A read-only view of one filesystem, by absolute path, symlinks not followed."""

    def lstat(self, path: str) -> Node | None: ...
    def read(self, path: str, limit: int) -> bytes: ...
    def listdir(self, path: str) -> list[str]: ...


def resolve(tree: Tree, path: str) -> str | None:
    """The path with every symlink replaced, confined to the guest root; None if it is missing."""
    todo = [c for c in path.split("/") if c]
    done = "/"
    hops = 0
    while todo:
        name = todo.pop(0)
        if name in (".", ""):
            continue
        if name == "..":
            done = posixpath.dirname(done.rstrip("/")) or "/"
            continue
        candidate = posixpath.join(done, name)
        node = tree.lstat(candidate)
        if node is None:
            return None
        if node.kind == "symlink":
            hops += 1
            if hops > _MAX_LINKS:
                return None
            if node.target.startswith("/"):
                done = "/"
            todo = [c for c in node.target.split("/") if c] + todo
            continue
        done = candidate
    return done


def read(tree: Tree, path: str, limit: int = 1 << 16) -> tuple[str, bytes] | None:
    """(resolved path, first `limit` bytes) of a regular file, or None."""
    real = resolve(tree, path)
    if real is None:
        return None
    node = tree.lstat(real)
    if node is None or node.kind != "file":
        return None
    return real, tree.read(real, limit)


def listdir(tree: Tree, path: str) -> tuple[str, list[str]] | None:
    real = resolve(tree, path)
    if real is None or (node := tree.lstat(real)) is None or node.kind != "dir":
        return None
    return real, tree.listdir(real)
