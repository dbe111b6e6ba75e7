"""NTFS read with ntfs-3g's userspace tools (ntfsls, ntfsinfo, ntfscat): no mount, no kernel
driver, the guest's bytes parsed by separate processes under resource limits.

NTFS names are case-insensitive, the tools' paths are not: every component is mapped to its
stored spelling through the parent's listing, so a guest's `WINDOWS/system32` is found.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.facts import Fact
from imgpipe.guest.fs.partition import TOOL_LIMITS
from imgpipe.guest.fs.tree import Node
from imgpipe.runner import CommandFailed, run, stream

_TOOLS = ("ntfsls", "ntfsinfo", "ntfscat")
_ATTRIBUTES = re.compile(r"File attributes:.*\(0x([0-9a-fA-F]+)\)")
_REPARSE_POINT = 0x400  # junctions, symlinks, deduplicated and cloud files: their $DATA is not the content
_CHUNK = 1 << 20


class _Enough(Exception):
    """Raised inside runner.stream to stop ntfscat once `limit` bytes are read (stream kills it)."""


class NtfsTree:
    """tree.Tree over an NTFS image file."""

    def __init__(self, image: Path, label: str) -> None:
        self.image = image
        self.label = label
        self._dirs: dict[str, _Listing] = {}
        self._kinds: dict[str, str] = {}
        self._listing("/")  # fail once, clearly, on a volume ntfs-3g cannot open

    def lstat(self, path: str) -> Node | None:
        real = self.real(path)
        if real is None:
            return None
        if real not in self._kinds:
            self._kinds[real] = self._kind(real)
        return Node(self._kinds[real])

    def listdir(self, path: str) -> list[str]:
        real = self.real(path)
        if real is None or self.lstat(real) != Node("dir"):
            return []
        return list(self._listing(real).kinds)

    def read(self, path: str, limit: int) -> bytes:
        """The first `limit` bytes of the file's unnamed $DATA; ntfscat is killed once they are read."""
        chunks: list[bytes] = []
        self._cat(path, limit, chunks.append)
        return b"".join(chunks)

    def copy(self, path: str, dest: Path, limit: int) -> int:
        """The first `limit` bytes of the file written to `dest` as ntfscat prints them, never held
        whole in memory (a registry hive); how many were written."""
        with dest.open("wb") as f:
            return self._cat(path, limit, f.write)

    def _cat(self, path: str, limit: int, sink: Callable[[bytes], object]) -> int:
        real = self.real(path)
        if real is None:
            return 0
        size = 0
        try:
            with stream(["ntfscat", "-f", str(self.image), real], limits=TOOL_LIMITS) as out:
                while size < limit and (chunk := out.read(min(_CHUNK, limit - size))):
                    sink(chunk)
                    size += len(chunk)
                if size >= limit:
                    raise _Enough
        except _Enough:
            pass
        except CommandFailed as exc:
            raise self._corrupt(exc.result.stderr, exc.result.returncode) from exc
        return size

    def real(self, path: str) -> str | None:
        """`path` as stored (each component's spelling taken from its directory), None if missing."""
        real = "/"
        for name in [c for c in path.split("/") if c not in ("", ".")]:
            listing = self._listing(real)
            stored = name if name in listing.kinds else listing.folded.get(_fold(name))
            if stored is None:
                return None
            real = real.rstrip("/") + "/" + stored
        return real

    def _kind(self, real: str) -> str:
        parent, _, name = real.rpartition("/")
        if real == "/" or self._listing(parent or "/").kinds.get(name):
            return "dir"
        result = run(["ntfsinfo", "-f", "-F", real, str(self.image)], limits=TOOL_LIMITS, ok_codes=range(256))
        attributes = _ATTRIBUTES.search(result.stdout)
        if result.returncode or attributes is None:
            raise self._corrupt(result.stderr, result.returncode)
        return "other" if int(attributes.group(1), 16) & _REPARSE_POINT else "file"

    def _listing(self, real: str) -> _Listing:
        """A directory's entries, listed with -F so that a directory shows a trailing slash."""
        if real not in self._dirs:
            result = run(["ntfsls", "-f", "-F", "-p", real, str(self.image)], limits=TOOL_LIMITS,
                         ok_codes=range(256))
            if result.returncode:
                raise self._corrupt(result.stderr, result.returncode)
            listing = _Listing({}, {})
            for line in result.stdout.splitlines():
                name = line.removesuffix("/")
                if name not in ("", ".", ".."):
                    listing.kinds[name] = line.endswith("/")
                    listing.folded.setdefault(_fold(name), name)
            self._dirs[real] = listing
        return self._dirs[real]

    def _corrupt(self, stderr: str, returncode: int) -> GuestInspectionError:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        # ntfs-3g ends with chkdsk advice; its first "Failed to ..." names what was unreadable
        why = next((line for line in lines if line.startswith("Failed to") and "mount" not in line),
                   lines[0] if lines else f"exit code {returncode}")
        return GuestInspectionError(f"{self.label}: corrupt NTFS filesystem: {why}")


@dataclass
class _Listing:
    kinds: dict[str, bool]  # stored name -> is a directory
    folded: dict[str, str]  # case-folded name -> stored name (the first, if a POSIX-namespace twin exists)


def available() -> bool:
    return all(shutil.which(tool) for tool in _TOOLS)


def windows(image: Path, label: str) -> Fact | None:
    """os_type=windows when the volume has Windows/System32 (where every Windows keeps its kernel)."""
    guest = NtfsTree(image, label)
    system32 = guest.real("/Windows/System32")
    if system32 is None or guest.lstat(system32) != Node("dir"):
        return None
    return Fact("windows", f"{label} {system32}")


def _fold(name: str) -> str:
    """NTFS compares names through its $UpCase table, one UTF-16 unit at a time: no 'ß' -> 'SS'."""
    return "".join(up if len(up := c.upper()) == 1 else c for c in name)

