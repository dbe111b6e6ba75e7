"""What every in-process inode reader shares: Tree's lstat/read/listdir over a path walk by inode
number, each directory parsed once and kept; a reader supplies how inodes, directories, file
data and symlink targets are found on its disk."""

from __future__ import annotations

import posixpath
from typing import Generic, Protocol, TypeVar

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs.budget import Budget
from imgpipe.guest.fs.tree import Node


class Inode(Protocol):
    @property
    def kind(self) -> str: ...  # "file", "dir", "symlink", "other"

    @property
    def size(self) -> int: ...


InodeT = TypeVar("InodeT", bound=Inode)


class InodeTree(Generic[InodeT]):
    """tree.Tree over a filesystem whose directories map names to inode numbers."""

    label: str
    root: int  # the root directory's inode number
    # a directory met twice on one path is corruption, not a path (XFS: no hard-linked directories)
    loops_are_corrupt = False

    def __init__(self, budget: Budget | None) -> None:
        self.budget = budget or Budget()
        self._dirs: dict[int, dict[str, int]] = {}

    def _inode(self, ino: int) -> InodeT:
        raise NotImplementedError

    def _directory(self, ino: int, inode: InodeT) -> dict[str, int]:
        raise NotImplementedError

    def _data(self, inode: InodeT, length: int) -> bytes:
        raise NotImplementedError

    def _symlink(self, inode: InodeT) -> bytes:
        raise NotImplementedError

    def _corrupt(self, why: str) -> GuestInspectionError:
        raise NotImplementedError

    def lstat(self, path: str) -> Node | None:
        found = self._lookup(path)
        if found is None:
            return None
        inode = self._inode(found)
        if inode.kind != "symlink":
            return Node(inode.kind)
        return Node("symlink", self._symlink(inode).decode(errors="replace"))

    def read(self, path: str, limit: int) -> bytes:
        found = self._lookup(path)
        if found is None:
            raise GuestInspectionError(f"{self.label}: {path} vanished")
        inode = self._inode(found)
        return self._data(inode, min(limit, inode.size))

    def listdir(self, path: str) -> list[str]:
        found = self._lookup(path)
        return [] if found is None else [n for n in self._entries(found) if n not in (".", "..")]

    def _lookup(self, path: str) -> int | None:
        """Inode of an absolute path whose parents are real directories (tree.resolve's job)."""
        ino = self.root
        walked: set[int] = set()
        for name in (c for c in posixpath.normpath(path).split("/") if c):
            if self._inode(ino).kind != "dir":
                return None
            if self.loops_are_corrupt:
                if ino in walked:
                    raise self._corrupt(f"directory inode {ino} is inside itself")
                walked.add(ino)
            child = self._entries(ino).get(name)
            if child is None:
                return None
            ino = child
        return ino

    def _entries(self, ino: int) -> dict[str, int]:
        if ino not in self._dirs:
            entries = self._directory(ino, self._inode(ino))
            self.budget.hold_entries(len(entries), f"{self.label}: directory inode {ino}")
            self._dirs[ino] = entries
        return self._dirs[ino]
