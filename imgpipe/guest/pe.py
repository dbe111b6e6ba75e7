"""A PE/COFF image (an EFI loader, a signed kernel) read from its bytes: machine, sections, the
Authenticode entries of its Certificate Table, and the byte ranges its Authenticode digest covers.

Bytes in, plain values out: whichever filesystem reader copied the file out, this only bounds
every offset by the data it was given, since a loader on a guest's ESP is untrusted input.
"""

from __future__ import annotations

from dataclasses import dataclass

# PE/COFF machine field -> nova architecture.
MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x14C: "i686", 0x5064: "riscv64", 0x1C4: "armv7l"}
HEAD = 4096  # enough for the headers of any loader seen (the section table ends well before)
CERTIFICATE_TABLE = 4  # data directory index; its address is a file offset, not an RVA
WIN_CERT_REVISION = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
MAX_CERT_ENTRIES = 16
_OPTIONAL_MAGIC = {0x10B: 96, 0x20B: 112}  # PE32 / PE32+ -> offset of the data directories
SIZE_OF_HEADERS, CHECKSUM = 60, 64  # offsets in the optional header, the same in PE32 and PE32+


class PeError(ValueError):
    """Not a PE image, or one whose headers point outside the file."""


@dataclass(frozen=True)
class Section:
    name: str
    offset: int  # in the file
    size: int  # raw size in the file


@dataclass(frozen=True)
class CertEntry:
    """One WIN_CERTIFICATE: its revision, type and payload (PKCS#7 SignedData DER for type 2)."""

    offset: int
    revision: int
    type: int
    data: bytes

    @property
    def pkcs7(self) -> bool:
        return self.revision == WIN_CERT_REVISION and self.type == WIN_CERT_TYPE_PKCS_SIGNED_DATA


@dataclass(frozen=True)
class PeImage:
    machine: int
    sections: tuple[Section, ...]
    cert_table: tuple[int, int]  # (file offset, size); (0, 0) when unsigned
    size_of_headers: int = 0
    checksum_at: int = 0  # file offset of the optional header's CheckSum; 0 without one
    cert_entry_at: int = 0  # file offset of the Certificate Table's data-directory entry; 0 without one

    @property
    def architecture(self) -> str:
        return MACHINES.get(self.machine, "unknown")

    def section(self, data: bytes, name: str) -> bytes | None:
        found = next((s for s in self.sections if s.name == name), None)
        if found is None:
            return None
        return data[found.offset:found.offset + found.size]


def is_pe(head: bytes) -> bool:
    if head[:2] != b"MZ" or len(head) < 64:
        return False
    pe = _u32(head, 60)
    return len(head) >= pe + 4 and head[pe:pe + 4] == b"PE\0\0"


def machine(head: bytes) -> str | None:
    """The architecture a PE header names ("unknown" for a machine not in MACHINES); None if not PE."""
    if not is_pe(head):
        return None
    pe = _u32(head, 60)
    return MACHINES.get(_u16(head, pe + 4), "unknown") if pe + 6 <= len(head) else None


def parse(data: bytes) -> PeImage:
    """Headers of a PE image from its bytes (the whole file, or HEAD bytes when only the machine
    and section table are wanted)."""
    if not is_pe(data):
        raise PeError("no MZ/PE header")
    pe = _u32(data, 60)
    coff = pe + 4
    if coff + 20 > len(data):
        raise PeError("COFF header past the end of the file")
    machine = _u16(data, coff)
    n_sections = _u16(data, coff + 2)
    symbols, n_symbols = _u32(data, coff + 8), _u32(data, coff + 12)
    opt_size = _u16(data, coff + 16)
    opt = coff + 20
    if opt + 2 > len(data):
        raise PeError("optional header past the end of the file")
    magic = _u16(data, opt)
    cert_table = (0, 0)
    size_of_headers = checksum_at = cert_entry_at = 0
    if magic in _OPTIONAL_MAGIC and opt + CHECKSUM + 4 <= min(opt + opt_size, len(data)):
        size_of_headers, checksum_at = _u32(data, opt + SIZE_OF_HEADERS), opt + CHECKSUM
        dirs = opt + _OPTIONAL_MAGIC[magic]
        count = _u32(data, dirs - 4)
        entry = dirs + 8 * CERTIFICATE_TABLE
        if count > CERTIFICATE_TABLE and entry + 8 <= opt + opt_size <= len(data):
            cert_table, cert_entry_at = (_u32(data, entry), _u32(data, entry + 4)), entry
    table = opt + opt_size
    if table + 40 * n_sections > len(data):
        raise PeError("section table past the end of the headers read")
    sections = []
    for n in range(n_sections):
        at = table + 40 * n
        name = data[at:at + 8].rstrip(b"\0").decode("ascii", "replace")
        if name.startswith("/") and name[1:].isdigit() and symbols:  # a long name in the COFF string table
            start = symbols + 18 * n_symbols + int(name[1:])
            end = data.find(b"\0", start, start + 64)
            name = data[start:end].decode("ascii", "replace") if start < len(data) and end > 0 else name
        sections.append(Section(name, _u32(data, at + 20), _u32(data, at + 16)))
    return PeImage(machine, tuple(sections), cert_table, size_of_headers, checksum_at, cert_entry_at)


def cert_entries(data: bytes, image: PeImage) -> list[CertEntry]:
    """Every WIN_CERTIFICATE in the Certificate Table: each is 8-byte aligned, and a dual-signed
    loader (Debian's shim) holds two (tools that read only the first miss the second)."""
    offset, size = image.cert_table
    if not size:
        return []
    end = offset + size
    if offset < 64 or end > len(data):
        raise PeError(f"certificate table at {offset:#x}+{size:#x} lies outside the {len(data)}-byte file")
    entries: list[CertEntry] = []
    at = offset
    while at + 8 <= end:
        length, revision, kind = _u32(data, at), _u16(data, at + 4), _u16(data, at + 6)
        if length < 8 or at + length > end:
            raise PeError(f"WIN_CERTIFICATE at {at:#x} has length {length}, past the table's end")
        if len(entries) == MAX_CERT_ENTRIES:
            raise PeError(f"more than {MAX_CERT_ENTRIES} WIN_CERTIFICATE entries")
        entries.append(CertEntry(at, revision, kind, data[at + 8:at + length]))
        at += (length + 7) & ~7
    return entries


def authenticode_ranges(data: bytes, image: PeImage) -> list[tuple[int, int]]:
    """The (start, end) ranges of the file an Authenticode digest covers, in the order hashed, as
    the PE/COFF specification and EDK2's DxeImageVerificationLib compute it: the headers without
    the CheckSum and the Certificate Table entry, each section's raw data in file order, then
    what follows the sections up to the Certificate Table (assumed, as firmware does, last)."""
    if not image.checksum_at:
        raise PeError("no PE32/PE32+ optional header: nothing an Authenticode digest covers")
    headers = image.size_of_headers
    skipped = image.cert_entry_at + 8 if image.cert_entry_at else image.checksum_at + 4
    if not skipped <= headers <= len(data):
        raise PeError(f"SizeOfHeaders {headers:#x} is outside {skipped:#x}..{len(data):#x}")
    if image.cert_entry_at:
        ranges = [(0, image.checksum_at), (image.checksum_at + 4, image.cert_entry_at), (skipped, headers)]
    else:
        ranges = [(0, image.checksum_at), (skipped, headers)]
    hashed = headers
    for section in sorted((s for s in image.sections if s.size), key=lambda s: s.offset):
        if section.offset + section.size > len(data):
            raise PeError(f"section {section.name} at {section.offset:#x}+{section.size:#x} lies outside "
                          f"the {len(data)}-byte file")
        ranges.append((section.offset, section.offset + section.size))
        hashed += section.size
    tail = len(data) - image.cert_table[1]
    if hashed < len(data) and tail < hashed:
        raise PeError(f"headers and sections ({hashed:#x} bytes) overlap the certificate table "
                      f"({image.cert_table[1]:#x} bytes at the end of the {len(data)}-byte file)")
    if tail > hashed:
        ranges.append((hashed, tail))
    return ranges


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 2], "little")


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "little")
