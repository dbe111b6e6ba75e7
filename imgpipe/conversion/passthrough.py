"""When the source already is what a profile uploads, the best conversion is none.

A qcow2 cloud image is usually exactly what kvm, qemu and ironic hosts read: converting it
costs a second and turns 84 MiB of compressed clusters into 194 MiB to upload. Only features
every reader of the target format understands pass (qemu 2.x era qcow2: compat 1.1, zlib);
anything newer or stateful (zstd, extended L2, bitmaps, encryption, external data) is
converted as before. vmdk, vhd and vhdx pass on the same terms: the source must already be
the subformat, adapter and size the profile would write, readable alike by qemu, Glance's
inspector and the target hypervisor. Every output option a check does not know makes it
convert: an unknown option is a difference it cannot rule out.

The source was already verified by inspection (format_inspector safety checks, `qemu-img
info` and `check`), so the copy is that verified file, byte for byte. What qemu-img info does
not report (vmdk adapter and stream markers, vhd footer copies, vhdx file parameters) is read
from the file's own headers with small bounded reads.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from imgpipe import qemu
from imgpipe.profiles import Profile
from imgpipe.runner import run
from imgpipe.source.inspect import ImageInfo

# Output options a plain qcow2 source satisfies as it is.
QCOW2_SATISFIES = {"compat": "1.1"}
QCOW2_COMPRESSION = {None, "zlib"}

SECTOR = 512
# vmdk hosted sparse header: magic, version, flags, capacity, grain, descriptor sector, sectors.
VMDK_HEADER = struct.Struct("<4sIIQQQQ")
VMDK_MARKERS = 1 << 17  # streamOptimized grains and tables are framed by markers
VMDK_DESCRIPTOR_MAX = (1 << 20) - 1  # qemu's and format_inspector's bound
VMDK_NO_PARENT = 0xFFFFFFFF
VMDK_OPTIONS = {"subformat", "adapter_type"}
VMDK_SUBFORMATS = {"streamOptimized", "monolithicSparse"}
VMDK_ADAPTER = re.compile(r'^\s*ddb\.adapterType\s*=\s*"([^"]*)"\s*$', re.MULTILINE | re.IGNORECASE)

# vhd footer: original size, current size, disk type, saved state (big-endian, 512 bytes).
VHD_FOOTER = struct.Struct(">40xQQ4xI20xB")
VHD_FOOTER_SIZE = 512
VHD_DYNAMIC = 3
VHD_BLOCK = 2 << 20  # what qemu, Hyper-V and XenServer write
VHD_OPTIONS = {"subformat": "dynamic", "force_size": "on"}

VHDX_REGION_TABLE = 192 << 10
VHDX_TABLE_SIZE = 64 << 10
VHDX_METADATA = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
VHDX_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
# File Parameters flags: bit 0 LeaveBlocksAllocated (fixed), bit 1 HasParent (differencing).
VHDX_FLAGS = {"dynamic": 0, "fixed": 1}


def applies(info: ImageInfo, profile: Profile, window: qemu.Source) -> bool:
    """Whether the whole source, unchanged, is the file this profile would produce."""
    out = profile.output
    if not profile.passthrough or out is None or profile.package or window.offset is not None:
        return False
    if info.format != out.format or out.compress:
        return False
    check = SAME_AS_OUTPUT.get(out.format)
    return check is not None and check(info, out.options)


def raw_matches(info: ImageInfo, options: dict[str, str]) -> bool:
    """A raw file is raw; any output option (preallocation) is a difference."""
    return not options


def qcow2_matches(info: ImageInfo, options: dict[str, str]) -> bool:
    return (all(QCOW2_SATISFIES.get(k) == v for k, v in options.items())
            and plain_qcow2(info.format_specific))


def plain_qcow2(data: dict[str, Any]) -> bool:
    """qemu-img info's qcow2 format-specific data shows nothing an older reader would miss."""
    return (data.get("compat") == "1.1"
            and data.get("compression-type") in QCOW2_COMPRESSION
            and not data.get("extended-l2")
            and not data.get("bitmaps")
            and not data.get("encrypt")
            and not data.get("data-file")
            and not data.get("corrupt"))


def vmdk_matches(info: ImageInfo, options: dict[str, str]) -> bool:
    """A single-file vmdk of the profile's subformat and adapter, with no parent.

    The adapter must match because Glance's vmware_adaptertype, set from the profile, would
    otherwise contradict the descriptor vCenter attaches the disk by. A streamOptimized
    source also needs deflate and markers (VMware's stream reader expects both), a sparse
    one neither. Several ddb.adapterType lines, or values differing only in case, convert:
    which one VMware takes is not known.
    """
    subformat = options.get("subformat", "monolithicSparse")
    if not options.keys() <= VMDK_OPTIONS or subformat not in VMDK_SUBFORMATS:
        return False
    data = info.format_specific
    extents = data.get("extents", [])
    stream = subformat == "streamOptimized"
    if (data.get("create-type") != subformat or data.get("parent-cid") != VMDK_NO_PARENT
            or len(extents) != 1 or not _is_source(extents[0].get("filename"), info.path)
            or bool(extents[0].get("compressed")) != stream):
        return False
    header = vmdk_header(info.path)
    if header is None:
        return False
    flags, descriptor = header
    return (bool(flags & VMDK_MARKERS) == stream
            and VMDK_ADAPTER.findall(descriptor) == [options.get("adapter_type", "ide")])


def _is_source(name: str | None, path: Path) -> bool:
    return name is not None and Path(name).resolve() == path.resolve()


def vmdk_header(path: Path) -> tuple[int, str] | None:
    """The sparse header's flags and the embedded descriptor (None: not one self-contained file)."""
    with path.open("rb") as f:
        head = f.read(VMDK_HEADER.size)
        if len(head) < VMDK_HEADER.size:
            return None
        magic, _version, flags, _capacity, _grain, sector, sectors = VMDK_HEADER.unpack(head)
        if magic != b"KDMV":
            return None
        descriptor = _read(f, sector * SECTOR, min(sectors * SECTOR, VMDK_DESCRIPTOR_MAX))
    return flags, descriptor.split(b"\0", 1)[0].decode("ascii", "replace")


def vpc_matches(info: ImageInfo, options: dict[str, str]) -> bool:
    """A dynamic vhd every reader sizes alike, as force_size=on guarantees for qemu's own.

    qemu reads the footer copy at the start, Hyper-V and Xen the one at the end: they must
    be equal. Glance's inspector takes the original size, Hyper-V the current size, qemu
    either that or the CHS geometry: all must be qemu's virtual size. A saved-state disk or
    a block size other than 2 MiB converts (other readers' support is unknown). Fixed vhds
    never get here: their only footer is at the end, so inspection sees raw and profiles
    refuse to write them.
    """
    if options != VHD_OPTIONS:
        return False
    size = info.path.stat().st_size
    if size < 2 * VHD_FOOTER_SIZE:
        return False
    with info.path.open("rb") as f:
        head = _read(f, 0, VHD_FOOTER_SIZE)
        tail = _read(f, size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE)
    if head != tail:
        return False
    original, current, disk_type, saved = VHD_FOOTER.unpack_from(head)
    return (disk_type == VHD_DYNAMIC and saved == 0
            and original == current == info.virtual_size
            and qemu.info(info.path, "vpc").get("cluster-size") == VHD_BLOCK)


def vhdx_matches(info: ImageInfo, options: dict[str, str]) -> bool:
    """A vhdx whose File Parameters say the profile's subformat (fixed or dynamic), no parent.

    qemu-img opens only vhdx files without a log to replay, so inspection already refused
    those; the block size qemu accepts (1-256 MiB) is the range the format allows.
    """
    wanted = VHDX_FLAGS.get(options.get("subformat", "dynamic"))
    if not options.keys() <= {"subformat"} or wanted is None:
        return False
    return vhdx_file_flags(info.path) == wanted


def vhdx_file_flags(path: Path) -> int | None:
    """File Parameters flags, found through the region and metadata tables (None: not found)."""
    with path.open("rb") as f:
        regions = _read(f, VHDX_REGION_TABLE, VHDX_TABLE_SIZE)
        if regions[:4] != b"regi":
            return None
        region = _table_entry(regions, 16, _count(regions, 8, "<I"), VHDX_METADATA)
        if region is None:
            return None
        (metadata_at,) = struct.unpack_from("<Q", region)
        table = _read(f, metadata_at, VHDX_TABLE_SIZE)
        if table[:8] != b"metadata":
            return None
        item = _table_entry(table, 32, _count(table, 10, "<H"), VHDX_FILE_PARAMETERS)
        if item is None:
            return None
        (item_at,) = struct.unpack_from("<I", item)
        parameters = _read(f, metadata_at + item_at, 8)
    return struct.unpack("<II", parameters)[1] if len(parameters) == 8 else None


def _count(table: bytes, offset: int, fmt: str) -> int:
    """An entry count, capped at what one 64 KiB table holds (the format's limit is 2047)."""
    count: int = struct.unpack_from(fmt, table, offset)[0]
    return min(count, 2047)


def _table_entry(table: bytes, first: int, count: int, guid: uuid.UUID) -> bytes | None:
    """The 16 bytes after `guid` in a table of 32-byte entries, each starting with a GUID."""
    for at in range(first, first + 32 * count, 32):
        entry = table[at:at + 32]
        if len(entry) < 32:
            return None
        if uuid.UUID(bytes_le=entry[:16]) == guid:
            return entry[16:]
    return None


def _read(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


SAME_AS_OUTPUT: dict[str, Callable[[ImageInfo, dict[str, str]], bool]] = {
    "raw": raw_matches, "qcow2": qcow2_matches, "vmdk": vmdk_matches,
    "vpc": vpc_matches, "vhdx": vhdx_matches,
}


def copy(src: Path, dest: Path) -> None:
    """A reflink where the filesystem can (instant, no space), else a sparse copy."""
    run(["cp", "--reflink=auto", "--sparse=auto", str(src), str(dest)])
