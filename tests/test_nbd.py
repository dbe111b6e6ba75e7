"""qemu-nbd reads: the bytes of a partition window of a compressed qcow2, exactly."""

from __future__ import annotations

import os
import signal
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


def _children_named(name: str) -> list[int]:
    """Pids of this process's children running `name` (every thread's children)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                pids.append(int(pid))
    return pids


def test_pipelined_reads_in_flight_each_get_their_own_bytes(tmp_path: Path) -> None:
    """Every read is queued before any answer is taken, so qemu-nbd has several in flight on
    each server and may answer them out of order; each future still gets its own bytes."""
    raw = tmp_path / "disk.raw"
    data = bytearray(os.urandom(8 << 20))
    data[3 << 20:5 << 20] = bytes(2 << 20)  # a zero range qcow2 stores as nothing
    raw.write_bytes(data)
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    spans = [(offset, 1 << 20) for offset in range(0, 8 << 20, 1 << 20)]
    spans += [(65536 * 3 + 100, 200_000), ((3 << 20) - 7, 14), ((8 << 20) - 1, 1), (0, nbd.MAX_REQUEST // 8)]
    with nbd.pipelined(qemu.Source(image, "qcow2"), "p", servers=2, depth=3) as reader:
        futures = [reader.submit(offset, length) for offset, length in spans]
        for future, (offset, length) in zip(futures, spans, strict=True):
            assert future.result(timeout=30) == data[offset:offset + length]
        with pytest.raises(nbd.NbdError, match="outside"):
            reader.submit((8 << 20) - 1, 2)


def test_pipelined_reads_fail_when_qemu_nbd_dies(tmp_path: Path) -> None:
    """A server that dies fails the reads queued on it and every later one, with an NbdError
    rather than a hang."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(4 << 20))
    with pytest.raises(nbd.NbdError):
        with nbd.pipelined(qemu.Source(raw, "raw"), "p", servers=1, depth=2) as reader:
            assert len(reader.submit(0, 4096).result(timeout=30)) == 4096
            [pid] = _children_named("qemu-nbd")
            os.kill(pid, signal.SIGKILL)
            futures = [reader.submit(offset, 1 << 20) for offset in range(0, 4 << 20, 1 << 20)]
            for future in futures:
                future.result(timeout=30)
