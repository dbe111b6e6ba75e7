"""Real XFS images for the reader's tests: mkfs.xfs -p from a host tree, a loop mount to add
what mkfs cannot make (holes, unwritten extents, fragmented forks), and xfs_db as the oracle.

mkfs.xfs 6.1 takes a protofile, not a directory, so `protofile` writes one for a host tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

FORMATS = {"local": 1, "extents": 2, "btree": 3}


def protofile(root: Path) -> str:
    """The mkfs.xfs -p text for a tree of plain names (no blanks or colons), owned by root."""
    lines = ["imgpipe-test", "0 0", "d--755 0 0"]

    def walk(folder: Path, depth: int) -> None:
        pad = " " * depth
        for entry in sorted(folder.iterdir()):
            if re.search(r"[\s:$]", entry.name):
                raise ValueError(f"{entry}: protofile names cannot hold blanks, colons or $")
            if entry.is_symlink():
                lines.append(f"{pad}{entry.name} l--777 0 0 {os.readlink(entry)}")
            elif entry.is_dir():
                lines.append(f"{pad}{entry.name} d--755 0 0")
                walk(entry, depth + 1)
                lines.append(f"{pad}$")
            else:
                lines.append(f"{pad}{entry.name} ---644 0 0 {entry.resolve()}")

    walk(root, 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


def mkfs(raw: Path, root: Path, size: int, options: tuple[str, ...] = ()) -> Path:
    """A sparse `size`-byte file holding an XFS made from `root`."""
    with raw.open("wb") as f:
        f.truncate(size)
    with tempfile.NamedTemporaryFile("w", suffix=".proto") as proto:
        proto.write(protofile(root))
        proto.flush()
        subprocess.run(["mkfs.xfs", "-q", "-f", *options, "-p", proto.name, str(raw)], check=True)
    return raw


@contextlib.contextmanager
def mounted(raw: Path) -> Iterator[Path]:
    """The image mounted read-write on a loop device, only to add fixtures mkfs cannot make."""
    with tempfile.TemporaryDirectory(prefix="xfs-fixture-") as where:
        subprocess.run(["mount", "-o", "loop", str(raw), where], check=True)
        try:
            yield Path(where)
        finally:
            subprocess.run(["umount", where], check=True)


def db(raw: Path, *commands: str, expert: bool = False) -> str:
    argv = ["xfs_db", "-x" if expert else "-r"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run([*argv, str(raw)], check=True, capture_output=True, text=True).stdout


def inode_number(raw: Path, path: str) -> int:
    return int(db(raw, f"path {path}", "stack").split("inode ")[1].split()[0].rstrip(","))


def fork_format(raw: Path, ino: int) -> int:
    """core.format of an inode as xfs_db reads it: 1 local, 2 extents, 3 btree."""
    return int(db(raw, f"inode {ino}", "print core.format").split("=")[1].split()[0])


def field(raw: Path, ino: int, name: str) -> str:
    return db(raw, f"inode {ino}", f"print {name}").split("=", 1)[1].strip()


def listing(raw: Path, path: str) -> list[str]:
    """Names in one directory as xfs_db ls prints them, without . and .."""
    names = []
    for line in db(raw, f"path {path}", "ls").splitlines():
        parts = line.split(None, 5)  # offset, inode, type, hash, name length, name and "(good)"
        if len(parts) == 6:
            name = parts[5][:int(parts[4])]
            if name not in (".", ".."):
                names.append(name)
    return names


def bmap(raw: Path, ino: int) -> list[tuple[int, int, int, bool]]:
    """(file block, filesystem block, count, unwritten) of each data extent, per xfs_db bmap."""
    found = []
    for line in db(raw, f"inode {ino}", "bmap").splitlines():
        m = re.match(r"data offset (\d+) startblock (\d+) \(\d+/\d+\) count (\d+) flag (\d)", line)
        if m:
            found.append((int(m[1]), int(m[2]), int(m[3]), m[4] == "1"))
    return found
