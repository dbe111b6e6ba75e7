"""Sizes as people write and read them (512M, 1T, 2.0 GiB), for options, messages and reports."""

from __future__ import annotations

import re

_UNITS = "KMGTP"
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGTP]?)(?:i?B)?", re.IGNORECASE)


def human_size(n: int) -> str:
    """2.0 GiB, 69.2 MiB, 512 B: binary units, one decimal."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def parse_size(text: str) -> int:
    """1099511627776, 1T, 1TiB, 1TB, 512M, 1.5G: binary units as qemu-img reads them (1T = 1024^4)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size like 512M, 20G or 1T")
    unit = match["unit"].upper()
    factor = 1 << (10 * (_UNITS.index(unit) + 1)) if unit else 1
    return int(float(match["number"]) * factor)


def size_arg(n: int) -> str:
    """The shortest way to write n as an option value: 1T, 512M, or the bytes."""
    for power in range(len(_UNITS), 0, -1):
        if n and n % (1 << (10 * power)) == 0:
            return f"{n >> (10 * power)}{_UNITS[power - 1]}"
    return str(n)
