"""From what a user or a distribution hands over to the disk image inside it.

A source may be compressed (.xz/.gz/.bz2/.zst, by content), an OVA (tar + OVF + vmdk), or both
(an OVA compressed as a whole). Each layer is undone into a work directory under a temp name
and renamed into place only when complete, so a failed or interrupted run leaves nothing;
the result is then inspected like any other source.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from imgpipe import locks
from imgpipe.errors import ConversionError, ImgpipeError
from imgpipe.source import decompress, ova
from imgpipe.source.inspect import DEFAULT_MAX_VIRTUAL_SIZE

CACHED_PREFIX = "unpacked-"


def needs_unpacking(src: Path) -> bool:
    return decompress.codec_of(src) is not None or ova.is_ova(src)


def unpack(src: Path, dest_dir: Path, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
           prefix: str = "") -> Path:
    """The disk image in src, written to dest_dir/PREFIX+NAME (src itself if it already is one)."""
    codec = decompress.codec_of(src)
    if codec is None:
        return _ova_disk(src, src.name, dest_dir, prefix, max_virtual_size) if ova.is_ova(src) else src
    name = decompress.plain_name(src, codec)
    with _temp(dest_dir, name) as tmp:
        decompress.decompress(src, codec, tmp, max_virtual_size)
        if ova.is_ova(tmp):  # an OVA compressed as a whole
            return _ova_disk(tmp, name, dest_dir, prefix, max_virtual_size)
        return _commit(tmp, dest_dir / (prefix + name))


def _ova_disk(archive: Path, name: str, dest_dir: Path, prefix: str, max_virtual_size: int) -> Path:
    """appliance.ova -> dest_dir/PREFIX+appliance.vmdk, the disk its descriptor names."""
    with _temp(dest_dir, name) as tmp:
        ova.extract_disk(archive, tmp, decompress.output_limit(max_virtual_size))
        return _commit(tmp, dest_dir / f"{prefix}{Path(name).stem}.vmdk")


@contextlib.contextmanager
def unpacked(src: Path, work_dir: Path, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE) -> Iterator[Path]:
    """The disk image in src for as long as the caller needs it, in a temp dir under work_dir."""
    if not needs_unpacking(src):
        yield src
        return
    if not work_dir.is_dir():
        raise ConversionError(f"{work_dir}: output directory does not exist")
    with tempfile.TemporaryDirectory(prefix=".imgpipe-unpack-", dir=work_dir) as tmp:
        disk = unpack(src, Path(tmp), max_virtual_size)
        with named_as(src, disk):
            yield disk


def cached(src: Path, sha256: str, cache_dir: Path, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE) -> Path:
    """src itself if it is a disk image, else its disk kept in cache_dir/sources/SHA256/.

    Keyed by the sha256 of the file the distribution published (checked before this runs),
    so a rerun after a failed upload, or another image built from the same source, reuses
    the decompressed disk; the catalog's prune removes it together with the download.
    """
    if not needs_unpacking(src):
        return src
    entry = cache_dir / "sources" / sha256
    entry.mkdir(parents=True, exist_ok=True)
    with locks.held(entry / ".lock", what=f"unpacking {src.name}"):
        done = sorted(entry.glob(f"{CACHED_PREFIX}*"))
        if done:
            os.utime(done[0])  # last use, for prune()
            return done[0]
        return unpack(src, entry, max_virtual_size, prefix=CACHED_PREFIX)


@contextlib.contextmanager
def named_as(src: Path, disk: Path) -> Iterator[None]:
    """Errors about the unpacked copy name the file the user gave, not a temp path."""
    try:
        yield
    except ImgpipeError as exc:
        if disk == src or str(disk) not in str(exc):
            raise
        renamed = copy.copy(exc)  # keeps its fields (a boot-check's serial-log tail)
        renamed.args = (str(exc).replace(str(disk), str(src)),)
        raise renamed from exc


@contextlib.contextmanager
def _temp(dest_dir: Path, name: str) -> Iterator[Path]:
    """A temp file in dest_dir, removed afterwards unless it was renamed into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, final: Path) -> Path:
    os.replace(tmp, final)
    return final
