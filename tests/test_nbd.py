"""qemu-nbd reads: the bytes of a partition window of a compressed qcow2, exactly."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from imgpipe import nbd, qemu


def test_window_reads_equal_the_raw_bytes_and_stay_inside(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    data = os.urandom(3 << 20)
    raw.write_bytes(data)
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    start, size = 1 << 20, (1 << 20) + 4096
    with nbd.export(qemu.Source(image, "qcow2", start, size), "w") as disk:
        assert disk.size == size
        for offset, length in ((0, 1), (65535, 3), (4000, 200_000), (size - 10, 10), (0, size), (777, 0)):
            assert disk.read(offset, length) == data[start + offset:start + offset + length]
        with pytest.raises(nbd.NbdError, match="outside"):
            disk.read(size - 10, 11)


def test_an_unreadable_image_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\0" * 100)
    with pytest.raises(nbd.NbdError, match="bad.qcow2: qemu-nbd cannot serve it"):
        with nbd.export(qemu.Source(bad, "qcow2"), str(bad)):
            pass


def test_a_read_that_overflows_the_cache_returns_its_bytes(tmp_path: Path) -> None:
    """The cache is emptied when it would overflow: a read half in it (chunks cached before) and
    half not must fetch the cached half again, not look for it in the emptied cache."""
    raw = tmp_path / "disk.raw"
    chunks = nbd.CACHED_CHUNKS + 4
    data = os.urandom(chunks * nbd.CHUNK)
    raw.write_bytes(data)
    with nbd.export(qemu.Source(raw, "raw"), "w") as disk:
        for c in range(nbd.CACHED_CHUNKS - 1):  # the cache one chunk short of full
            disk.read(c * nbd.CHUNK, 1)
        offset, length = (nbd.CACHED_CHUNKS - 2) * nbd.CHUNK, 3 * nbd.CHUNK  # one cached chunk, two not
        assert disk.read(offset, length) == data[offset:offset + length]
