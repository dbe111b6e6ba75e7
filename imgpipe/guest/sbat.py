"""SBAT, in shim's own terms (shim's SBAT.md): the component generations an EFI binary declares
in its .sbat section, and the revocation level shim enforces on what it loads.

The level is shim's own: its .sbatlevel section holds the "previous" and "latest" SbatLevel
payloads, and shim applies "previous" where the firmware's variables hold no newer SbatLevel
(the fresh variable store nova gives a Secure Boot guest); "latest" only where SbatPolicy asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LEVEL = 4096  # an SbatLevel payload is a few lines


@dataclass(frozen=True)
class Level:
    """An SbatLevel payload: "sbat,1,<datestamp>", then one "component,generation" a line."""

    datestamp: str
    minimum: dict[str, int]

    def __str__(self) -> str:
        return f"{self.datestamp} ({' '.join(f'{k},{v}' for k, v in self.minimum.items())})"


def previous_level(section: bytes | None) -> Level | None:
    """The level shim applies by default, from its .sbatlevel section (shim >= 15.8); None
    without one or when it does not parse."""
    if section is None or len(section) < 12:
        return None
    offset = int.from_bytes(section[4:8], "little") + 4  # offsets count from after the version field
    end = section.find(b"\0", offset, offset + MAX_LEVEL)
    if offset >= len(section) or end < 0:
        return None
    lines = [line.split(",") for line in section[offset:end].decode("ascii", "replace").splitlines() if line]
    if not lines or lines[0][:2] != ["sbat", "1"] or len(lines[0]) < 3:
        return None
    return Level(lines[0][2], {parts[0]: _generation(parts[1]) for parts in lines[1:] if len(parts) >= 2})


def generations(lines: list[str]) -> dict[str, int]:
    """Component -> generation from the lines of a .sbat section (component,generation,vendor,...)."""
    return {parts[0]: _generation(parts[1]) for line in lines if len(parts := line.split(",")) >= 2}


def revoked(level: Level, declared: dict[str, int]) -> list[str]:
    """What shim's verify_sbat refuses: a declared component below the level's generation."""
    return [f"{name},{generation} < {name},{level.minimum[name]}" for name, generation in declared.items()
            if name in level.minimum and generation < level.minimum[name]]


def _generation(text: str) -> int:
    """shim reads generations with atoi: leading digits, and 0 where there are none."""
    found = re.match(r"\s*(\d{1,9})", text)
    return int(found.group(1)) if found else 0
