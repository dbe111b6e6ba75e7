"""OVA sources (a vSphere export): a tar holding an OVF descriptor, its vmdk(s), maybe a manifest.

The disk is the one the descriptor names (DiskSection/Disk@fileRef -> References/File@href, the
first disk, as nova's VMware driver reads it). It is copied out of the tar by member, never by
a path the archive chose, bounded in size, and checked against the manifest (.mf) when there is
one. The result is a plain vmdk that is then inspected like any other source.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imgpipe.errors import ChecksumError, ImageTooLargeError, NoSpaceError, UnsafeImageError
from imgpipe.source.decompress import FREE_MARGIN
from imgpipe.source.partial import removed_on_failure
from imgpipe.units import human_size

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
MAX_DESCRIPTOR = 16 << 20  # an OVF descriptor is a few KiB; refuse to parse huge XML
_MF_LINE = re.compile(r"^(SHA256|SHA1|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Descriptor:
    ovf_name: str
    disk_href: str
    capacity: int | None


def is_ova(path: Path) -> bool:
    """A tar whose first member is an .ovf descriptor (what vSphere and ovftool write)."""
    with path.open("rb") as f:
        head = f.read(512)
    if head[257:262] != b"ustar":
        return False
    name = head[:100].split(b"\0", 1)[0].decode(errors="replace")
    return name.lower().removeprefix("./").endswith(".ovf")


def read_descriptor(ovf_name: str, text: bytes, where: Path) -> Descriptor:
    """The first disk's file name and capacity from an OVF 1.x/2.x envelope."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise UnsafeImageError(f"{where}: {ovf_name} is not valid XML: {exc}") from exc
    ns = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else OVF_NS

    def attr(el: ET.Element, key: str) -> str | None:
        return el.get(f"{{{ns}}}{key}", el.get(key))

    disk = root.find(f"{{{ns}}}DiskSection/{{{ns}}}Disk")
    if disk is None or not attr(disk, "fileRef"):
        raise UnsafeImageError(f"{where}: {ovf_name} has no DiskSection/Disk with a fileRef")
    ref = attr(disk, "fileRef")
    href = next((attr(f, "href") for f in root.iterfind(f"{{{ns}}}References/{{{ns}}}File")
                 if attr(f, "id") == ref), None)
    if not href:
        raise UnsafeImageError(f"{where}: {ovf_name}: References has no File with id {ref}")
    if "/" in href or href in (".", "..") or ":" in href:
        raise UnsafeImageError(f"{where}: {ovf_name}: disk href {href!r} is not a plain member name")
    return Descriptor(ovf_name, href, _capacity(attr(disk, "capacity"), attr(disk, "capacityAllocationUnits")))


def _capacity(value: str | None, units: str | None) -> int | None:
    """ovf:capacity in bytes; units like 'byte * 2^30' scale it."""
    if value is None or not value.isdigit():
        return None
    match = re.fullmatch(r"\s*byte\s*(?:\*\s*2\s*\^\s*(\d+))?\s*", units or "byte")
    return int(value) << int(match.group(1) or 0) if match else None


def parse_manifest(text: str) -> dict[str, tuple[str, str]]:
    """{file name: (algorithm, hex digest)} from `SHA256(name)= hex` lines."""
    sums: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        match = _MF_LINE.match(line.strip())
        if match:
            sums[match.group(2).strip()] = (match.group(1).lower(), match.group(3).lower())
    return sums


def extract_disk(src: Path, dest: Path, limit: int) -> Descriptor:
    """Copy the OVA's disk into dest (a temp file the caller named), verified; removed on failure."""
    with (removed_on_failure(dest, src, "extract its disk", "not a readable OVA", (tarfile.TarError, OSError)),
          tarfile.open(src, mode="r:") as tar):
        members = {_plain(m.name): m for m in tar.getmembers()}
        desc, text = _descriptor_of(tar, src)
        disk = members.get(desc.disk_href)
        if disk is None or not disk.isfile():
            raise UnsafeImageError(f"{src}: OVA has no regular file {desc.disk_href} (named by {desc.ovf_name})")
        if disk.size > limit:
            raise ImageTooLargeError(f"{src}: {desc.disk_href} is {human_size(disk.size)}, beyond --max-virtual-size")
        free = shutil.disk_usage(dest.parent).free
        if disk.size + FREE_MARGIN > free:
            raise NoSpaceError(f"{src}: extracting {desc.disk_href} needs {human_size(disk.size)}, "
                               f"{dest.parent} has {human_size(free)} free")
        mf = next((m for n, m in members.items() if n.lower().endswith(".mf") and m.isfile()), None)
        sums = parse_manifest(_member_bytes(tar, mf, src, MAX_DESCRIPTOR).decode(errors="replace")) if mf else {}
        ovf_hash = _hasher(src, desc.ovf_name, sums)
        if ovf_hash:
            ovf_hash.update(text)
        _check(src, desc.ovf_name, sums, ovf_hash)
        disk_hash = _hasher(src, desc.disk_href, sums)
        fileobj = tar.extractfile(disk)
        assert fileobj is not None
        with dest.open("wb") as out:
            _copy(fileobj, out, disk_hash)
        _check(src, desc.disk_href, sums, disk_hash)
    return desc


def read_ova_descriptor(src: Path) -> Descriptor:
    """The descriptor of an OVA file, without reading its disk."""
    try:
        with tarfile.open(src, mode="r:") as tar:
            return _descriptor_of(tar, src)[0]
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeImageError(f"{src}: not a readable OVA: {exc}") from exc


def _descriptor_of(tar: tarfile.TarFile, src: Path) -> tuple[Descriptor, bytes]:
    ovf = next((m for m in tar.getmembers() if _plain(m.name).lower().endswith(".ovf")), None)
    if ovf is None:
        raise UnsafeImageError(f"{src}: OVA has no .ovf descriptor")
    text = _member_bytes(tar, ovf, src, MAX_DESCRIPTOR)
    return read_descriptor(_plain(ovf.name), text, src), text


def _plain(name: str) -> str:
    return name.removeprefix("./")


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, src: Path, limit: int) -> bytes:
    if not member.isfile() or member.size > limit:
        raise UnsafeImageError(f"{src}: {member.name} is not a small regular file")
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def _copy(fileobj: IO[bytes], out: IO[bytes], hasher: hashlib._Hash | None) -> None:
    while chunk := fileobj.read(CHUNK):
        out.write(chunk)
        if hasher:
            hasher.update(chunk)


def _hasher(src: Path, name: str, sums: dict[str, tuple[str, str]]) -> hashlib._Hash | None:
    """A hash for a file the manifest lists; with a manifest every file used must be listed."""
    if not sums:
        return None
    if name not in sums:
        raise ChecksumError(f"{src}: the manifest does not list {name}")
    return hashlib.new(sums[name][0])


def _check(src: Path, name: str, sums: dict[str, tuple[str, str]], hasher: hashlib._Hash | None) -> None:
    if hasher and hasher.hexdigest() != sums[name][1]:
        raise ChecksumError(f"{src}: {name} does not match its {sums[name][0]} in the manifest; not used")
