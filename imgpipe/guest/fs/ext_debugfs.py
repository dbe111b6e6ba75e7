"""ext2/3/4 read with e2fsprogs' debugfs in catastrophic (-c, read-only) mode: no mount, no
kernel driver, the guest's bytes parsed by a userspace tool under resource limits."""

from __future__ import annotations

import re
from pathlib import Path

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs.partition import TOOL_LIMITS
from imgpipe.guest.fs.tree import Node
from imgpipe.runner import run

_OPEN_FAILED = ("while trying to open", "Filesystem not open", "Bad magic number",
                "Corrupt", "while reading", "checksum does not match")
_TYPE = re.compile(r"Type: (\w+)")
_FAST_LINK = re.compile(r'Fast link dest: "(.*)"')
_KINDS = {"regular": "file", "directory": "dir", "symlink": "symlink"}


class ExtTree:
    def __init__(self, image: Path, label: str) -> None:
        self.image = image
        self.label = label
        self._stat: dict[str, Node | None] = {}  # path resolution asks for the same parents often
        self._debugfs("stats")  # fail once, clearly, on a filesystem debugfs cannot open

    def _debugfs(self, request: str) -> bytes:
        result = run(["debugfs", "-c", "-R", request, str(self.image)], limits=TOOL_LIMITS, ok_codes=range(256))
        errors = [line for line in result.stderr.splitlines()[1:]
                  if any(word in line for word in _OPEN_FAILED)]
        if errors or result.returncode:
            why = errors[0].split(" while trying to open")[0] if errors else f"debugfs exit code {result.returncode}"
            raise GuestInspectionError(f"{self.label}: corrupt ext filesystem: {why.strip()}")
        return result.stdout.encode()

    def lstat(self, path: str) -> Node | None:
        if path not in self._stat:
            self._stat[path] = self._lstat(path)
        return self._stat[path]

    def _lstat(self, path: str) -> Node | None:
        result = run(["debugfs", "-c", "-R", f"stat {_quote(path)}", str(self.image)], limits=TOOL_LIMITS,
                     ok_codes=range(256))
        kind = _TYPE.search(result.stdout)
        if kind is None:
            return None
        node_kind = _KINDS.get(kind.group(1), "other")
        if node_kind != "symlink":
            return Node(node_kind)
        fast = _FAST_LINK.search(result.stdout)
        target = fast.group(1) if fast else self.read(path, 4096).decode(errors="replace")
        return Node("symlink", target)

    def read(self, path: str, limit: int) -> bytes:
        """Through `dump` to a host file: debugfs' stdout is text, binaries need their bytes."""
        out = self.image.with_suffix(".read")
        out.unlink(missing_ok=True)
        self._debugfs(f"dump {_quote(path)} {_quote(str(out))}")
        try:
            with out.open("rb") as f:
                return f.read(limit)
        finally:
            out.unlink(missing_ok=True)

    def listdir(self, path: str) -> list[str]:
        out = self._debugfs(f"ls -p {_quote(path)}").decode(errors="replace")
        names = [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6]
        return [n for n in names if n not in (".", "..")]


def _quote(path: str) -> str:
    return '"' + path.replace('"', '') + '"'
