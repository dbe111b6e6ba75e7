"""What one inspection may read from a guest and hold, whatever its filesystems claim.

One Budget per inspection, handed to every reader by the registry's open call: the bytes read
through the disk's read function, the directory entries kept in the readers' caches and the
size of one directory are counted against it, so no geometry, count or size read from the
guest makes inspection read or hold more. Limits are settings (IMGPIPE_INSPECT_READ,
IMGPIPE_INSPECT_ENTRIES, IMGPIPE_INSPECT_DIRECTORY); a real guest needs a small share of each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from imgpipe.errors import OverBudgetError, SettingError
from imgpipe.units import human_size, parse_size

Read = Callable[[int, int], bytes]

READ_BYTES = 256 << 20  # a Linux root's inspection reads a few MiB; a Windows hive is read by ntfs-3g
DIRECTORY_BYTES = 8 << 20  # one directory: some 100 000 entries, 40 times a distribution's /usr/bin
ENTRIES = 500_000  # directory entries held in the readers' caches, all filesystems together
COPY_BYTES = 32 << 30  # data of a partition copied out for a tool that only reads files (ntfs-3g)


def _setting(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return parse_size(text)
    except ValueError as exc:
        raise SettingError(f"{name}={text}: {exc}") from None


@dataclass(kw_only=True)
class Budget:
    read_bytes: int = READ_BYTES
    directory_bytes: int = DIRECTORY_BYTES
    entries: int = ENTRIES
    copy_bytes: int = COPY_BYTES
    spent: dict[str, int] = field(default_factory=lambda: {"read": 0, "entries": 0})

    @classmethod
    def from_env(cls) -> Budget:
        return cls(read_bytes=_setting("IMGPIPE_INSPECT_READ", READ_BYTES),
                   directory_bytes=_setting("IMGPIPE_INSPECT_DIRECTORY", DIRECTORY_BYTES),
                   entries=_setting("IMGPIPE_INSPECT_ENTRIES", ENTRIES),
                   copy_bytes=_setting("IMGPIPE_INSPECT_COPY", COPY_BYTES))

    def counted(self, read: Read, label: str) -> Read:
        """`read` with every byte it returns counted against read_bytes."""
        def counted_read(offset: int, length: int) -> bytes:
            if self.spent["read"] + length > self.read_bytes:
                raise OverBudgetError(f"{label}: reading {human_size(length)} at byte {offset} would take "
                                      f"inspection past its {human_size(self.read_bytes)} read budget "
                                      "(IMGPIPE_INSPECT_READ)")
            self.spent["read"] += length
            return read(offset, length)
        return counted_read

    def directory(self, size: int, where: str) -> None:
        """Refuse to read a directory whose blocks are larger than directory_bytes."""
        if size > self.directory_bytes:
            raise OverBudgetError(f"{where} is {human_size(size)}, over the {human_size(self.directory_bytes)} "
                                  "budget for one directory (IMGPIPE_INSPECT_DIRECTORY)")

    def hold_entries(self, count: int, where: str) -> None:
        """Count directory entries a reader keeps; refuse past `entries` in all."""
        self.spent["entries"] += count
        if self.spent["entries"] > self.entries:
            raise OverBudgetError(f"{where}: {count} entries take the directories held past the "
                                  f"{self.entries} entry budget (IMGPIPE_INSPECT_ENTRIES)")

    def copy(self, size: int, where: str) -> None:
        """Refuse to copy out a partition holding more than copy_bytes of data."""
        if size > self.copy_bytes:
            raise OverBudgetError(f"{where} holds {human_size(size)} of data, over the "
                                  f"{human_size(self.copy_bytes)} budget for a copy (IMGPIPE_INSPECT_COPY)")
