"""A bounded reader of ASN.1 DER (and the BER that Authenticode blobs often use: indefinite
lengths), enough to walk a PKCS#7 SignedData that `cryptography` loads only for its certificates.

Every length is checked against the bytes it was given and nesting is capped: the blobs come from
a loader on a guest's ESP, which is untrusted input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
NULL = 0x05
MAX_DEPTH = 32
MAX_OID = 64  # bytes: the longest OID in a certificate is far shorter


class DerError(ValueError):
    """Bytes that are not the ASN.1 the caller expected."""


@dataclass(frozen=True)
class Tlv:
    """One element: its tag byte, and where its header, content and end lie in `data`."""

    data: bytes
    tag: int
    start: int
    content_start: int
    content_end: int
    end: int  # past the end-of-contents octets of an indefinite length

    @property
    def content(self) -> bytes:
        return self.data[self.content_start:self.content_end]

    @property
    def encoded(self) -> bytes:
        return self.data[self.start:self.end]

    def children(self) -> Iterator[Tlv]:
        at = self.content_start
        while at < self.content_end:
            child = read(self.data, at, self.content_end)
            yield child
            at = child.end

    def items(self, *tags: int) -> list[Tlv]:
        """The children, each checked against the tag expected at its place (0: any)."""
        got = list(self.children())
        if len(got) < len(tags):
            raise DerError(f"tag {self.tag:#04x} at {self.start}: {len(got)} elements, {len(tags)} expected")
        for child, tag in zip(got, tags, strict=False):
            if tag and child.tag != tag:
                raise DerError(f"tag {child.tag:#04x} at {child.start} where {tag:#04x} was expected")
        return got


def read(data: bytes, at: int = 0, limit: int | None = None, depth: int = 0) -> Tlv:
    """The element starting at `at`, which must end by `limit` (the end of `data` by default)."""
    end_of = len(data) if limit is None else limit
    if depth > MAX_DEPTH:
        raise DerError(f"nested deeper than {MAX_DEPTH} at {at}")
    if at + 2 > end_of:
        raise DerError(f"element at {at} runs past its end ({end_of})")
    tag, first = data[at], data[at + 1]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-byte tag at {at}")
    head = at + 2
    if first == 0x80:  # BER indefinite length: constructed content up to the end-of-contents octets
        if not tag & 0x20:
            raise DerError(f"indefinite length on a primitive element at {at}")
        cursor = head
        while True:
            if cursor + 2 > end_of:
                raise DerError(f"indefinite-length element at {at} has no end-of-contents")
            if data[cursor:cursor + 2] == b"\0\0":
                return Tlv(data, tag, at, head, cursor, cursor + 2)
            cursor = read(data, cursor, end_of, depth + 1).end
    if first & 0x80:
        count = first & 0x7F
        if count > 4 or head + count > end_of:
            raise DerError(f"length of {count} bytes at {at}")
        length = int.from_bytes(data[head:head + count], "big")
        head += count
    else:
        length = first
    if head + length > end_of:
        raise DerError(f"element at {at} of {length} bytes runs past its end ({end_of})")
    return Tlv(data, tag, at, head, head + length, head + length)


def oid(element: Tlv) -> str:
    if element.tag != OID or not 0 < len(element.content) <= MAX_OID or element.content[-1] & 0x80:
        raise DerError(f"no OBJECT IDENTIFIER at {element.start}")
    arcs: list[int] = []
    value = 0
    for byte in element.content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def integer(element: Tlv) -> int:
    if element.tag != INTEGER:
        raise DerError(f"no INTEGER at {element.start}")
    return int.from_bytes(element.content, "big", signed=True)
