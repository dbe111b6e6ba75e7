"""LZO1X decompression, as btrfs stores it, in pure Python.

The only LZO bindings for Python are GPL; btrfs compresses with lzo1x_1, whose byte stream
is described in the kernel's Documentation/staging/lzo.rst. Every length and distance is
checked against the input and the output so far, and output stops at a caller's bound, so
a hostile stream ends in LzoError, never in a large allocation.
"""

from __future__ import annotations


class LzoError(ValueError):
    """The stream is not valid LZO1X, or it inflates past the bound."""


def decompress(data: bytes, limit: int) -> bytes:
    """The bytes one LZO1X stream encodes; LzoError past `limit` bytes or at any inconsistency."""
    out = bytearray()
    pos = 0

    def byte() -> int:
        nonlocal pos
        if pos >= len(data):
            raise LzoError("truncated stream")
        pos += 1
        return data[pos - 1]

    def length(value: int, bits: int) -> int:
        """A run length: the operand's bits, or its mask plus 255 per zero byte plus the next byte."""
        if value:
            return value
        value = (1 << bits) - 1
        while (extra := byte()) == 0:
            value += 255
            if value > limit:
                raise LzoError("length past the bound")
        return value + extra

    def literals(count: int) -> None:
        nonlocal pos
        if pos + count > len(data):
            raise LzoError("literal run past the input")
        if len(out) + count > limit:
            raise LzoError(f"output past {limit} bytes")
        out.extend(data[pos:pos + count])
        pos += count

    def copy(distance: int, count: int) -> None:
        if distance > len(out) or distance <= 0:
            raise LzoError(f"distance {distance} before the start of the output")
        if len(out) + count > limit:
            raise LzoError(f"output past {limit} bytes")
        start = len(out) - distance
        if distance >= count:
            out.extend(out[start:start + count])
        else:  # overlapping: the run repeats the last `distance` bytes
            chunk = bytes(out[start:])
            out.extend((chunk * (count // distance + 1))[:count])

    state = 0
    first = byte()
    if first > 17:
        count = first - 17
        literals(count)
        state = min(count, 4)
    else:
        pos = 0
    while True:
        op = byte()
        if op < 16:
            if state == 0:
                literals(length(op & 15, 4) + 3)
                state = 4
                continue
            distance = (byte() << 2) + ((op >> 2) & 3) + (1 if state < 4 else 2049)
            copy(distance, 2 if state < 4 else 3)
            trail = op & 3
        elif op < 32:
            count = length(op & 7, 3) + 2
            low = byte()
            word = low | byte() << 8
            distance = ((op & 8) << 11) + (word >> 2)
            if distance == 0:
                if count != 3:
                    raise LzoError("bad end-of-stream marker")
                return bytes(out)
            copy(distance + 16384, count)
            trail = word & 3
        elif op < 64:
            count = length(op & 31, 5) + 2
            low = byte()
            word = low | byte() << 8
            copy((word >> 2) + 1, count)
            trail = word & 3
        else:
            count = (3 + ((op >> 5) & 1)) if op < 128 else (5 + ((op >> 5) & 3))
            copy((byte() << 3) + ((op >> 2) & 7) + 1, count)
            trail = op & 3
        literals(trail)
        state = trail
