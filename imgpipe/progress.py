"""The progress callback every long step reports through (conversion, upload, catalog sync)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """label: what is written (a file, an upload); pct: 0-100; total: the bytes 100 % stands for
    (0 when unknown), so a log line can give a rate and an ETA."""

    def __call__(self, label: str, pct: float, total: int = 0) -> None: ...
