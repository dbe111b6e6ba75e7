"""Compressed sources (.xz, .gz, .bz2, .zst): recognised by content, decompressed as a bounded stream.

Distributions ship cloud images compressed and publish the checksum of the compressed file, so
the checksum is checked before this runs and the decompressed file is then inspected like any
other source. The decompressed bytes are untrusted too: a small file can claim terabytes, so
the copy stops at a size limit and when the disk runs low, and leaves nothing behind.
Runs of zeros are written as holes, so a mostly empty raw disk costs only its data on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imgpipe import runner
from imgpipe.errors import ImageTooLargeError, NoSpaceError
from imgpipe.source.partial import removed_on_failure
from imgpipe.units import human_size

CHUNK = 1 << 20
# Stop well before the disk is full: other outputs of the run still need room.
FREE_MARGIN = 64 << 20
SPACE_CHECK_EVERY = 64 << 20
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True)
class Codec:
    name: str
    magic: bytes
    suffix: str
    # Decompressor commands writing to stdout, the first installed one is used; none: ISA-L in process.
    commands: tuple[tuple[str, ...], ...] = ()


# Measured on a 2 GiB disk image (README "Speed"): xz -T0 and lbzip2 decode on every core and
# beat Python's lzma/bz2; ISA-L's igzip beats gzip, pigz and Python's gzip; zstd is fast on one.
CODECS = (
    Codec("xz", b"\xfd7zXZ\x00", ".xz", (("xz", "-T0", "-dc"),)),
    Codec("gzip", b"\x1f\x8b", ".gz"),
    Codec("bzip2", b"BZh", ".bz2", (("lbzip2", "-dc"), ("bzip2", "-dc"))),
    Codec("zstd", b"\x28\xb5\x2f\xfd", ".zst", (("zstd", "-dcq"),)),
)


def codec_of(path: Path) -> Codec | None:
    """The compression of a file, from its first bytes (never its name)."""
    with path.open("rb") as f:
        head = f.read(8)
    return next((c for c in CODECS if head.startswith(c.magic)), None)


def output_limit(max_virtual_size: int) -> int:
    """A disk image file is never much larger than its virtual size (qcow2 metadata < 1%)."""
    return max_virtual_size + max_virtual_size // 64 + (64 << 20)


def plain_name(path: Path, codec: Codec) -> str:
    """guest.qcow2.xz -> guest.qcow2; a name without the codec's suffix gets .img appended."""
    name = path.name
    return name[: -len(codec.suffix)] if name.lower().endswith(codec.suffix) and len(name) > len(codec.suffix) \
        else name + ".img"


def decompress(src: Path, codec: Codec, dest: Path, max_virtual_size: int) -> None:
    """Decompress src into dest (a temp file the caller named); on any failure dest is removed."""
    limit = output_limit(max_virtual_size)
    corrupt = f"corrupt {codec.name} data"
    with (removed_on_failure(dest, src, "decompress it", corrupt, (OSError, EOFError, runner.CommandFailed)),
          _reader(src, codec) as stream, dest.open("wb") as out):
        copy_bounded(stream, out, src, limit)
        out.flush()
        os.fsync(out.fileno())


@contextlib.contextmanager
def _reader(src: Path, codec: Codec) -> Iterator[IO[bytes]]:
    if not codec.commands:
        from isal import igzip  # only when a gzip is really decompressed: inspect imports CODECS

        with igzip.open(src, "rb") as f:
            yield f
        return
    argv = next((c for c in codec.commands if shutil.which(c[0])), codec.commands[-1])
    with runner.stream([*argv, "--", str(src)]) as out:
        yield out


def copy_bounded(stream: IO[bytes], out: IO[bytes], src: Path, limit: int) -> int:
    """Copy until EOF, holes for zero chunks; refuse past `limit` bytes or when space runs low."""
    total = since_check = 0
    directory = Path(out.name).parent
    while chunk := stream.read(CHUNK):
        total += len(chunk)
        if total > limit:
            raise ImageTooLargeError(f"{src}: decompresses to more than {human_size(limit)}, beyond "
                                     "--max-virtual-size; refused (a decompression bomb?)")
        if chunk == _ZEROS[: len(chunk)]:
            out.seek(len(chunk), os.SEEK_CUR)
            continue
        out.write(chunk)
        since_check += len(chunk)
        if since_check >= SPACE_CHECK_EVERY:
            since_check = 0
            free = shutil.disk_usage(directory).free
            if free < FREE_MARGIN:
                raise NoSpaceError(f"{src}: decompressing it would fill {directory} "
                                   f"({human_size(total)} so far, {human_size(free)} free)")
    out.truncate(total)
    return total
