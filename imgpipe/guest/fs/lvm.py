"""LVM2 physical volumes parsed in-process, so a root filesystem on a logical volume can be inspected.

Device-mapper is not available where inspection runs, and the lvm tools would act on the host,
so this reads what lvm itself reads: the label in the first four sectors, the PV header, the
metadata area header and the current VG metadata text (a circular buffer that may wrap), then
maps each logical volume's extents onto the partition. Only linear and striped segments whose
extents are all on this PV are mapped (plus virtual zero/error segments); everything else (thin,
raid, mirror, snapshot, cache, other PVs) is reported as skipped rather than guessed at. Every
count and offset is bounded by the partition and the metadata size.
"""

from __future__ import annotations

import bisect
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs import checks
from imgpipe.guest.fs.checks import Check

SECTOR = 512
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
LABEL_SECTORS = 4
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512
MAX_METADATA = 1 << 20  # a VG with thousands of LVs still fits; more is not a guest's root disk
MAX_DEPTH = 16  # the format nests four deep (VG, logical_volumes, LV, segment)
MAX_STRIPES = 128  # lvm's own limit
MAX_LIST = 1024  # the longest list lvm writes is a segment's stripes or raid images: two entries each
MAX_EXTENTS = (1 << 32) - 1  # lvm counts extents in 32 bits
_INITIAL_CRC = 0xF597A6CF
_RAW_LOCN_IGNORED = 0x1
_NUMBER = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?")
_TOKEN = re.compile(r'(?P<skip>[ \t\r\n]+|#[^\n]*)|(?P<string>"(?:[^"\\]|\\.)*")|(?P<punct>[{}\[\]=,])'
                    r'|(?P<word>[^\s{}\[\]=,"#]+)', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)

Scalar = int | float | str
Value = Scalar | list[Scalar] | dict[str, "Value"]
Read = Callable[[int, int], bytes]


@dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    size: int
    read: Read  # read(offset, length) of the LV's bytes, mapped through its segments
    evidence: str


@dataclass(frozen=True)
class _Segment:
    start: int  # byte offset in the LV
    length: int
    kind: str  # "linear", "striped", "zero" or "error"
    areas: tuple[int, ...]  # byte offset in the PV where each stripe's area starts
    chunk: int  # stripe size in bytes (striped only)


def is_physical_volume(head: bytes) -> bool:
    """An LVM2 label in one of the first four sectors of `head`."""
    return _label_sector(head) is not None


def logical_volumes(read: Read, size: int, label: str) -> tuple[list[LogicalVolume], list[str]]:
    """The LVs of this PV's VG that live wholly on it, and one note per LV not returned and why.

    `read`/`size` are the partition holding the PV; `label` names it in errors and evidence.
    """
    return _PhysicalVolume(read, size, label).volumes()


def lvm_crc(data: bytes, crc: int = _INITIAL_CRC) -> int:
    """lvm's checksum: CRC-32 (reflected 0xEDB88320) without the usual inversions."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _label_sector(head: bytes) -> int | None:
    for index in range(LABEL_SECTORS):
        sector = head[index * SECTOR:(index + 1) * SECTOR]
        if len(sector) == SECTOR and sector[:8] == LABEL_ID and sector[24:32] == LABEL_TYPE:
            return index
    return None


class _PhysicalVolume:
    def __init__(self, read: Read, size: int, label: str) -> None:
        self._read_raw = read
        self.size = size
        self.label = label

    def volumes(self) -> tuple[list[LogicalVolume], list[str]]:
        uuid, metadata_areas = self._pv_header()
        text = None
        for offset, length in metadata_areas:
            text = self._metadata_text(offset, length)
            if text is not None:
                break
        if text is None:
            return [], [f"{self.label}: LVM2 PV {_dashed(uuid)} holds no volume group metadata"]
        return self._volume_group(_Parser(text, self._corrupt).parse(), uuid)

    def _pv_header(self) -> tuple[str, list[tuple[int, int]]]:
        """The PV uuid and its metadata areas (offset, size), from the label sector."""
        head = self._read(0, LABEL_SECTORS * SECTOR)
        index = _label_sector(head)
        if index is None:
            raise self._corrupt("no LVM2 label")
        sector = head[index * SECTOR:(index + 1) * SECTOR]
        number, crc, offset = struct.unpack_from("<QII", sector, 8)
        if number != index or lvm_crc(sector[20:]) != crc:
            raise self._corrupt(f"label in sector {index} fails its checksum")
        if not 32 <= offset <= SECTOR - 40 - 32:
            raise self._corrupt(f"PV header at byte {offset} of the label")
        uuid = sector[offset:offset + 32].decode("ascii", "replace")
        pos = offset + 40
        lists: list[list[tuple[int, int]]] = []
        for _ in range(2):  # data areas, then metadata areas, each ends with a zero entry
            areas = []
            while True:
                if pos + 16 > SECTOR:
                    raise self._corrupt("PV header area list runs past the label sector")
                area = struct.unpack_from("<QQ", sector, pos)
                pos += 16
                if area == (0, 0):
                    break
                areas.append(area)
            lists.append(areas)
        for area_offset, area_size in lists[1]:
            checks.verify(AREA_CHECKS, {"mda_offset": area_offset, "mda_size": area_size, "pv_bytes": self.size},
                          self._corrupt)
        return uuid, lists[1]

    def _metadata_text(self, start: int, size: int) -> str | None:
        """The committed VG metadata in one metadata area, or None if it holds none."""
        header = self._read(start, MDA_HEADER_SIZE)
        crc, magic, version, where, length = struct.unpack_from("<I16sIQQ", header)
        if magic != MDA_MAGIC or version != 1 or lvm_crc(header[4:]) != crc:
            raise self._corrupt(f"bad metadata area header at byte {start}")
        if where != start or length != size:
            raise self._corrupt(f"metadata area header at byte {start} describes byte {where} ({length} bytes)")
        offset, text_size, text_crc, flags = struct.unpack_from("<QQII", header, 40)
        if flags & _RAW_LOCN_IGNORED or (offset, text_size) == (0, 0):
            return None
        checks.verify(TEXT_CHECKS, {"raw_locn.offset": offset, "raw_locn.size": text_size, "mda_size": size},
                      self._corrupt)
        wrap = max(0, offset + text_size - size)
        raw = self._read(start + offset, text_size - wrap)
        if wrap:
            raw += self._read(start + MDA_HEADER_SIZE, wrap)
        if lvm_crc(raw) != text_crc:
            raise self._corrupt("metadata text fails its checksum")
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    def _volume_group(self, tree: dict[str, Value], uuid: str) -> tuple[list[LogicalVolume], list[str]]:
        groups = [(name, v) for name, v in tree.items() if isinstance(v, dict) and "physical_volumes" in v]
        if len(groups) != 1:
            raise self._corrupt(f"{len(groups)} volume groups in one metadata text")
        vg_name, vg = groups[0]
        extent = _int(vg, "extent_size", f"VG {vg_name}", self._corrupt, 1, 1 << 32) * SECTOR
        pvs = _section(vg, "physical_volumes", f"VG {vg_name}", self._corrupt)
        mine = [name for name, pv in pvs.items()
                if isinstance(pv, dict) and str(pv.get("id", "")).replace("-", "") == uuid]
        if len(mine) != 1:
            raise self._corrupt(f"VG {vg_name} lists this PV {len(mine)} times")
        pv_name = mine[0]
        pv = _section(pvs, pv_name, f"VG {vg_name}", self._corrupt)
        pe_start = _int(pv, "pe_start", pv_name, self._corrupt, 0, self.size // SECTOR) * SECTOR
        pe_count = _int(pv, "pe_count", pv_name, self._corrupt, 0, MAX_EXTENTS)
        if pe_start + pe_count * extent > self.size:
            raise self._corrupt(f"{pv_name}'s {pe_count} extents end past the PV")
        layout = _Layout(vg_name, pv_name, pe_start, pe_count, extent, self._corrupt)
        volumes, skipped = [], []
        for name, lv in _section(vg, "logical_volumes", f"VG {vg_name}", self._corrupt).items():
            if not isinstance(lv, dict):
                raise self._corrupt(f"VG {vg_name}: {name} is not a section")
            segments, why = layout.segments(name, lv)
            status = lv.get("status", [])
            if not isinstance(status, list) or "VISIBLE" not in status:
                continue  # a part of another LV (raid image, thin pool data, spare): not a filesystem
            if why:
                skipped.append(f"{self.label}: VG {vg_name}, LV {name}: {why}")
            else:
                volumes.append(self._volume(vg_name, name, segments))
        layout.check_overlaps()
        return volumes, skipped

    def _volume(self, vg: str, name: str, segments: list[_Segment]) -> LogicalVolume:
        kinds = "+".join(sorted({s.kind for s in segments}))
        count = f"{len(segments)} segment{'s' if len(segments) > 1 else ''}"
        size = segments[-1].start + segments[-1].length
        return LogicalVolume(vg, name, size, _Mapper(self._read, segments, size, f"{self.label}: LV {vg}/{name}"),
                             f"{self.label} LVM2 PV, VG {vg}, LV {name} ({kinds}, {count})")

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise self._corrupt(f"read of {length} bytes at {offset} is outside the PV")
        data = self._read_raw(offset, length)
        if len(data) != length:
            raise GuestInspectionError(f"{self.label}: short read at byte {offset}")
        return data

    def _corrupt(self, why: str) -> GuestInspectionError:
        return GuestInspectionError(f"{self.label}: corrupt LVM2 metadata: {why}")


class _Layout:
    """Checks every segment against the PV and records which extents of this PV are used."""

    def __init__(self, vg: str, pv: str, pe_start: int, pe_count: int, extent: int,
                 corrupt: Callable[[str], GuestInspectionError]) -> None:
        self.vg, self.pv, self.pe_start, self.pe_count, self.extent = vg, pv, pe_start, pe_count, extent
        self._corrupt = corrupt
        self._used: list[tuple[int, int, str]] = []  # (first extent, count, LV)

    def segments(self, lv_name: str, lv: dict[str, Value]) -> tuple[list[_Segment], str]:
        """The LV's segments in order, or a reason it is not read; raises on inconsistencies."""
        where = f"LV {lv_name}"
        sections = [(k, v) for k, v in lv.items() if isinstance(v, dict)]
        if not sections:
            raise self._corrupt(f"{where} has no segments")
        _int(lv, "segment_count", where, self._corrupt, len(sections), len(sections))
        parts = sorted((_int(seg, "start_extent", f"{where} {name}", self._corrupt, 0, MAX_EXTENTS), name, seg)
                       for name, seg in sections)
        segments: list[_Segment] = []
        reasons: list[str] = []
        next_extent = 0
        for first, name, seg in parts:
            count = _int(seg, "extent_count", f"{where} {name}", self._corrupt, 1, MAX_EXTENTS)
            if first != next_extent:
                raise self._corrupt(f"{where} {name} starts at extent {first}, not {next_extent}")
            next_extent = first + count
            if next_extent > MAX_EXTENTS:
                raise self._corrupt(f"{where} has more than {MAX_EXTENTS} extents")
            segment, why = self._segment(f"{where} {name}", lv_name, seg, first, count)
            segments.append(segment)
            if why:
                reasons.append(why)
        return segments, "; ".join(dict.fromkeys(reasons))

    def _segment(self, where: str, lv_name: str, seg: dict[str, Value], first: int,
                 count: int) -> tuple[_Segment, str]:
        kind = seg.get("type")
        start, length = first * self.extent, count * self.extent
        if kind in ("zero", "error"):
            return _Segment(start, length, str(kind), (), 0), ""
        if kind != "striped":
            return _Segment(start, length, "other", (), 0), f"{kind!s} segments are not read"
        stripes = _int(seg, "stripe_count", where, self._corrupt, 1, MAX_STRIPES)
        chunk = _int(seg, "stripe_size", where, self._corrupt, 1, 1 << 32) * SECTOR if stripes > 1 else 0
        area = count // stripes
        if count % stripes or (chunk and (chunk & (chunk - 1) or area * self.extent % chunk)):
            raise self._corrupt(f"{where}: {count} extents do not divide into {stripes} stripes of {chunk} bytes")
        pairs = seg.get("stripes")
        if not isinstance(pairs, list) or len(pairs) != 2 * stripes:
            raise self._corrupt(f"{where}: bad stripes list")
        areas, others = [], []
        for pv, pe in zip(pairs[::2], pairs[1::2], strict=True):
            if not isinstance(pv, str) or not isinstance(pe, int):
                raise self._corrupt(f"{where}: bad stripes list")
            if pv != self.pv:
                others.append(pv)
                continue
            if pe < 0 or pe + area > self.pe_count:
                raise self._corrupt(f"{where} uses extents {pe}-{pe + area - 1} past {self.pv}'s {self.pe_count}")
            self._used.append((pe, area, lv_name))
            areas.append(self.pe_start + pe * self.extent)
        if others:
            return _Segment(start, length, "other", (), 0), f"extents on other PVs ({', '.join(sorted(set(others)))})"
        return _Segment(start, length, "linear" if stripes == 1 else "striped", tuple(areas), chunk), ""

    def check_overlaps(self) -> None:
        end, owner = 0, ""
        for first, count, lv in sorted(self._used):
            if first < end:
                raise self._corrupt(f"LV {lv} and LV {owner} share extent {first} of {self.pv}")
            end, owner = first + count, lv


class _Mapper:
    """read(offset, length) of one LV: each piece goes to the segment, stripe and chunk holding it."""

    def __init__(self, read: Read, segments: list[_Segment], size: int, name: str) -> None:
        self._read, self._segments, self.size, self._name = read, segments, size, name
        self._starts = [s.start for s in segments]

    def __call__(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise GuestInspectionError(f"{self._name}: read of {length} bytes at {offset} is outside the LV")
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            seg = self._segments[bisect.bisect_right(self._starts, pos) - 1]
            rel, count = pos - seg.start, min(end, seg.start + seg.length) - pos
            if seg.kind == "zero":
                out += bytes(count)
            elif seg.kind == "error":
                raise GuestInspectionError(f"{self._name}: byte {pos} is in an error segment")
            elif seg.kind == "linear":
                out += self._read(seg.areas[0] + rel, count)
            else:
                row, within = divmod(rel, seg.chunk)
                row, stripe = divmod(row, len(seg.areas))
                count = min(count, seg.chunk - within)
                out += self._read(seg.areas[stripe] + row * seg.chunk + within, count)
            pos += count
        return bytes(out)


class _Parser:
    """lvm's text metadata: `name { ... }` sections, `key = value`, strings, numbers, flat lists."""

    def __init__(self, text: str, corrupt: Callable[[str], GuestInspectionError]) -> None:
        self._corrupt = corrupt
        self._tokens = self._tokenize(text)

    def _tokenize(self, text: str) -> Iterator[tuple[str, str]]:
        """(kind, text) tokens one at a time, so memory stays near the text's own size."""
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise self._corrupt(f"unparsable metadata text at character {pos}")
            pos = match.end()
            if match.lastgroup != "skip":
                yield str(match.lastgroup), match.group()

    def parse(self) -> dict[str, Value]:
        return self._section(0)

    def _section(self, depth: int) -> dict[str, Value]:
        if depth > MAX_DEPTH:
            raise self._corrupt(f"metadata nests deeper than {MAX_DEPTH}")
        out: dict[str, Value] = {}
        while True:
            kind, text = self._next(allow_end=depth == 0)
            if kind == "end" or (kind, text) == ("punct", "}"):
                if (kind == "end") != (depth == 0):
                    raise self._corrupt("unbalanced braces in metadata")
                return out
            if kind != "word":
                raise self._corrupt(f"expected a name in metadata, found {text[:20]!r}")
            if text in out:
                raise self._corrupt(f"{text[:40]!r} appears twice in one metadata section")
            kind, after = self._next()
            if (kind, after) == ("punct", "{"):
                out[text] = self._section(depth + 1)
            elif (kind, after) == ("punct", "="):
                out[text] = self._value()
            else:
                raise self._corrupt(f"expected '{{' or '=' after {text[:40]!r} in metadata")

    def _value(self) -> Value:
        kind, text = self._next()
        if (kind, text) != ("punct", "["):
            return self._scalar(kind, text)
        items: list[Scalar] = []
        while True:
            kind, text = self._next()
            if (kind, text) == ("punct", "]"):
                return items
            items.append(self._scalar(kind, text))
            if len(items) > MAX_LIST:
                raise self._corrupt(f"a metadata list is longer than {MAX_LIST}")
            kind, text = self._next()
            if (kind, text) == ("punct", "]"):
                return items
            if (kind, text) != ("punct", ","):
                raise self._corrupt(f"expected ',' or ']' in a metadata list, found {text[:20]!r}")

    def _scalar(self, kind: str, text: str) -> Scalar:
        if kind == "string":
            return _ESCAPE.sub(r"\1", text[1:-1])
        if kind == "word" and _NUMBER.fullmatch(text):
            return float(text) if "." in text else int(text)
        raise self._corrupt(f"bad value {text[:40]!r} in metadata")

    def _next(self, allow_end: bool = False) -> tuple[str, str]:
        token = next(self._tokens, None)
        if token is None:
            if allow_end:
                return "end", ""
            raise self._corrupt("metadata text ends early")
        return token


def _section(parent: dict[str, Value], key: str, where: str,
             corrupt: Callable[[str], GuestInspectionError]) -> dict[str, Value]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise corrupt(f"{where} has no {key} section")
    return value


def _int(parent: dict[str, Value], key: str, where: str, corrupt: Callable[[str], GuestInspectionError],
         low: int, high: int) -> int:
    value = parent.get(key)
    if not isinstance(value, int) or not low <= value <= high:
        raise corrupt(f"{where}: {key} = {str(value)[:40]} (expected {low}..{high})")
    return value


def _dashed(uuid: str) -> str:
    """The uuid as lvm prints it (6-4-4-4-4-4-6), as a user would search for it."""
    return "-".join(uuid[a:b] for a, b in zip((0, 6, 10, 14, 18, 22, 26), (6, 10, 14, 18, 22, 26, 32), strict=True))


# What lvm's own label and metadata-area readers insist on, named as lvm's on-disk structures name them.
AREA_CHECKS = (
    Check(field="mda_size", rule=f"a metadata area holds at least its header twice ({2 * MDA_HEADER_SIZE} bytes)",
          holds=lambda f: f["mda_size"] >= 2 * MDA_HEADER_SIZE),
    Check(field="mda_offset", rule="the metadata area must end inside the PV's {pv_bytes} bytes",
          holds=lambda f: f["mda_offset"] + f["mda_size"] <= f["pv_bytes"]),
)
TEXT_CHECKS = (
    Check(field="raw_locn.offset", rule="the metadata text must start past the header, inside its {mda_size}-byte area",
          holds=lambda f: MDA_HEADER_SIZE <= f["raw_locn.offset"] < f["mda_size"]),
    Check(field="raw_locn.size", rule=f"metadata text is 1 byte to {MAX_METADATA >> 20} MiB, and fits in its area",
          holds=lambda f: 0 < f["raw_locn.size"] <= MAX_METADATA
          and f["raw_locn.offset"] + f["raw_locn.size"] - f["mda_size"] <= f["raw_locn.offset"] - MDA_HEADER_SIZE),
)
