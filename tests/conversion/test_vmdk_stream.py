"""The native streamOptimized writer against the real qemu-img and Glance's inspector.

qemu-img is the oracle: it must accept our files (check), read them back identical to
the raw source (compare), and its own streamOptimized output of the same raw must hold
the same grains and virtual size.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oslo_utils.imageutils import format_inspector

from imgpipe.conversion import vmdk_stream
from imgpipe.conversion.vmdk_stream import (
    ADAPTER_TYPES,
    DESC_SECTORS,
    GRAIN_SECTORS,
    GRAIN_SIZE,
    GT_COVERAGE,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    OVERHEAD_SECTORS,
    SECTOR,
    raw_disk,
    write_stream_optimized,
)

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def _write(raw: Path, dest: object, **kwargs: object) -> None:
    with raw_disk(raw) as disk:
        write_stream_optimized(disk, dest, **kwargs)  # type: ignore[arg-type]

BLOCK_KINDS = ("random", "zeros", "text", "one-byte")
Block = tuple[int, int, str]  # offset, length, kind
MAX_BLOCK_SECTORS = 600
WORDS = b"lorem ipsum dolor sit amet kernel initrd grub vmlinuz etc usr lib ".split()


def qemu_img(*args: str | Path) -> str:
    return subprocess.run(
        ["qemu-img", *map(str, args)], check=True, capture_output=True, text=True
    ).stdout


def text_bytes(rng: random.Random, size: int) -> bytes:
    """Compressible but not trivial data, like files on a disk."""
    out = bytearray()
    while len(out) < size:
        out += rng.choice(WORDS) + b" "
    return bytes(out[:size])


def block_bytes(kind: str, size: int, rng: random.Random) -> bytes:
    if kind == "random":
        return rng.randbytes(size)
    if kind == "text":
        return text_bytes(rng, size)
    data = bytearray(size)  # "zeros" allocates all-zero data; "one-byte" one non-zero byte
    if kind == "one-byte":
        data[rng.randrange(size)] = rng.randrange(1, 256)
    return bytes(data)


def write_raw(path: Path, size: int, blocks: list[Block], seed: int) -> None:
    """A sparse raw file: holes everywhere except the given (offset, length, kind) blocks."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length, kind in blocks:
            f.seek(offset)
            f.write(block_bytes(kind, length, rng))


def our_vmdk(raw: Path, out: Path, **kwargs: object) -> Path:
    with open(out, "wb") as f:
        _write(raw, f, **kwargs)
    return out


def qemu_vmdk(raw: Path, out: Path, adapter_type: str = "lsilogic") -> Path:
    qemu_img(
        "convert", "-f", "raw", "-O", "vmdk",
        "-o", f"subformat=streamOptimized,adapter_type={adapter_type}", raw, out,
    )
    return out


def info(vmdk: Path) -> dict:
    return json.loads(qemu_img("info", "--output=json", "-f", "vmdk", vmdk))


def data_ranges(vmdk: Path) -> list[tuple[int, int]]:
    """Guest byte ranges that hold grains, merged."""
    ranges: list[tuple[int, int]] = []
    for entry in json.loads(qemu_img("map", "--output=json", "-f", "vmdk", vmdk)):
        if not entry["data"]:
            continue
        start, end = entry["start"], entry["start"] + entry["length"]
        if ranges and ranges[-1][1] == start:
            start = ranges.pop()[0]
        ranges.append((start, end))
    return ranges


def descriptor(vmdk: Path) -> str:
    with open(vmdk, "rb") as f:
        f.seek(SECTOR)
        return f.read(DESC_SECTORS * SECTOR).split(b"\0", 1)[0].decode("ascii")


def descriptor_fields(text: str) -> dict[str, str]:
    """key -> value of every `key=value` / `key = "value"` line, CID left out (random)."""
    fields = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            fields[key] = value.strip('"')
    fields.pop("CID")
    return fields


def extent_line(text: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith("RW ")).split()


def stream_lbas(vmdk: Path) -> list[int]:
    """Read the file front to back the way VMware's stream reader does: grain LBAs in order.

    Also checks the markers: grain tables interleaved, then GD, footer and end-of-stream
    exactly at the end of the file.
    """
    data = vmdk.read_bytes()
    pos, lbas, metadata = OVERHEAD_SECTORS * SECTOR, [], []
    while True:
        value, size = struct.unpack_from("<QI", data, pos)
        if size:  # a grain: lba, compressed size, deflate data, sector padding
            lbas.append(value)
            pos += -(-(12 + size) // SECTOR) * SECTOR
            continue
        (marker,) = struct.unpack_from("<I", data, pos + 12)
        metadata.append(marker)
        pos += (1 + value) * SECTOR
        if marker == MARKER_EOS:
            break
    assert pos == len(data)
    assert metadata[-3:] == [MARKER_GD, MARKER_FOOTER, MARKER_EOS]
    assert set(metadata[:-3]) <= {MARKER_GT}
    return lbas


def assert_valid_copy(raw: Path, vmdk: Path) -> None:
    """qemu-img accepts the file and reads it back equal to the raw; Glance accepts it."""
    qemu_img("check", "-f", "vmdk", vmdk)
    assert "identical" in qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, vmdk)
    inspector = format_inspector.detect_file_format(str(vmdk))
    assert inspector.NAME == "vmdk"
    inspector.safety_check()
    assert inspector.virtual_size == info(vmdk)["virtual-size"]


@st.composite
def sparse_images(draw: st.DrawFn) -> tuple[int, list[Block], int]:
    """(size, blocks, seed): sizes from one sector to three grain tables, any alignment."""
    sectors = draw(
        st.one_of(
            st.integers(1, 3 * GRAIN_SIZE // SECTOR + 7),
            st.integers(1, 3 * GT_COVERAGE // SECTOR),
        )
    )
    blocks = []
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, sectors - 1))
        length = draw(st.integers(1, min(MAX_BLOCK_SECTORS, sectors - start)))
        blocks.append((start * SECTOR, length * SECTOR, draw(st.sampled_from(BLOCK_KINDS))))
    if draw(st.booleans()):  # data in the very last sectors
        length = draw(st.integers(1, min(MAX_BLOCK_SECTORS, sectors)))
        kind = draw(st.sampled_from(BLOCK_KINDS))
        blocks.append(((sectors - length) * SECTOR, length * SECTOR, kind))
    return sectors * SECTOR, blocks, draw(st.integers(0, 2**32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=sparse_images(), jobs=st.integers(1, 4))
def test_matches_raw_and_qemu_oracle(image: tuple[int, list[Block], int], jobs: int) -> None:
    size, blocks, seed = image
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "src.raw")
        write_raw(raw, size, blocks, seed)
        ours = our_vmdk(raw, Path(tmp, "ours.vmdk"), jobs=jobs)
        oracle = qemu_vmdk(raw, Path(tmp, "qemu.vmdk"))

        assert_valid_copy(raw, ours)
        assert "identical" in qemu_img("compare", "-f", "vmdk", "-F", "vmdk", oracle, ours)
        assert info(ours)["virtual-size"] == info(oracle)["virtual-size"] == size
        assert info(ours)["format-specific"]["data"]["create-type"] == "streamOptimized"
        assert data_ranges(ours) == data_ranges(oracle)  # all-zero grains skipped like qemu
        lbas = stream_lbas(ours)
        assert lbas == sorted(set(lbas))  # LBA order, each grain once
        assert all(lba % GRAIN_SECTORS == 0 for lba in lbas)


def test_stdlib_zlib_fallback_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmdk_stream, "_deflate", zlib)
    raw = tmp_path / "disk.raw"
    blocks = [(i * 40000, 30000, kind) for i, kind in enumerate(BLOCK_KINDS)]
    write_raw(raw, 3 * GRAIN_SIZE + SECTOR, blocks, 5)
    assert_valid_copy(raw, our_vmdk(raw, tmp_path / "ours.vmdk", jobs=2))


def test_empty_image_has_no_grains(tmp_path: Path) -> None:
    raw = tmp_path / "empty.raw"
    write_raw(raw, 5 * GT_COVERAGE, [], 0)
    ours = our_vmdk(raw, tmp_path / "ours.vmdk")
    assert_valid_copy(raw, ours)
    assert data_ranges(ours) == []
    assert ours.stat().st_size < 2 * GRAIN_SIZE


def test_size_not_sector_aligned_rounds_up(tmp_path: Path) -> None:
    raw = tmp_path / "odd.raw"
    raw.write_bytes(b"x" * 1000)
    ours = our_vmdk(raw, tmp_path / "ours.vmdk")
    assert info(ours)["virtual-size"] == 1024
    back = tmp_path / "back.raw"
    qemu_img("convert", "-f", "vmdk", "-O", "raw", ours, back)
    assert back.read_bytes() == b"x" * 1000 + bytes(24)


@pytest.mark.parametrize("adapter_type", ADAPTER_TYPES)
def test_descriptor_mirrors_qemu(tmp_path: Path, adapter_type: str) -> None:
    raw = tmp_path / "disk.raw"
    write_raw(raw, 3 * GT_COVERAGE + 4096, [(GRAIN_SIZE, 4096, "text")], 1)
    ours = our_vmdk(raw, tmp_path / "ours.vmdk", adapter_type=adapter_type)
    oracle = qemu_vmdk(raw, tmp_path / "qemu.vmdk", adapter_type=adapter_type)

    ours_text, qemu_text = descriptor(ours), descriptor(oracle)
    assert f'ddb.adapterType = "{adapter_type}"' in ours_text
    assert descriptor_fields(ours_text) == descriptor_fields(qemu_text)
    sectors = str(raw.stat().st_size // SECTOR)
    assert extent_line(ours_text) == ["RW", sectors, "SPARSE", '"ours.vmdk"']
    assert info(ours)["format-specific"]["data"]["create-type"] == "streamOptimized"


@pytest.mark.parametrize("adapter_type", ["lsiLogic", "IDE", "paraVirtual", "lsilogicsas", ""])
def test_rejects_adapter_types_qemu_does_not_know(tmp_path: Path, adapter_type: str) -> None:
    raw = tmp_path / "disk.raw"
    write_raw(raw, GRAIN_SIZE, [], 0)
    with open(tmp_path / "out.vmdk", "wb") as f, pytest.raises(ValueError, match="adapter_type"):
        _write(raw, f, adapter_type=adapter_type)
    assert (tmp_path / "out.vmdk").stat().st_size == 0


@pytest.mark.parametrize(
    ("size", "kwargs", "message"),
    [
        (0, {}, "1 byte to 2 TiB"),
        (SECTOR, {"jobs": 0}, "jobs"),
        (SECTOR, {"extent_name": "../etc/disk.vmdk"}, "extent name"),
        (SECTOR, {"extent_name": 'a"b.vmdk'}, "extent name"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, size: int, kwargs: dict, message: str) -> None:
    raw = tmp_path / "disk.raw"
    write_raw(raw, size, [], 0)
    with open(tmp_path / "out.vmdk", "wb") as f, pytest.raises(ValueError, match=message):
        _write(raw, f, **kwargs)


def test_extent_name_for_temporary_destination(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    write_raw(raw, GRAIN_SIZE, [(0, SECTOR, "text")], 2)
    ours = our_vmdk(raw, tmp_path / ".tmp-x1", extent_name="ubuntu.vmdk")
    assert extent_line(descriptor(ours))[-1] == '"ubuntu.vmdk"'


class _Pipe:
    """A write-only, unseekable sink: proves the writer never seeks or rewrites."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)


def test_output_is_a_pure_stream_and_independent_of_jobs(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    kinds = enumerate(BLOCK_KINDS * 20)
    blocks = [(i * 3 * GRAIN_SIZE + 777, 5 * GRAIN_SIZE, kind) for i, kind in kinds]
    write_raw(raw, GT_COVERAGE * 2 + 12345 * SECTOR, blocks, 3)
    outputs = []
    for jobs in (1, 4):
        pipe = _Pipe()
        _write(raw, pipe, jobs=jobs)  # type: ignore[arg-type]
        data = b"".join(pipe.chunks)
        outputs.append(data[: SECTOR] + data[(1 + DESC_SECTORS) * SECTOR :])  # CID is random
        streamed = tmp_path / f"streamed-{jobs}.vmdk"
        streamed.write_bytes(data)
        assert_valid_copy(raw, streamed)
    assert outputs[0] == outputs[1]


def mixed_raw(path: Path, size: int, data_bytes: int, seed: int) -> None:
    """Sparse raw with 1 MiB chunks of random, text and half-zero data scattered over it."""
    rng = random.Random(seed)
    chunk = 1 << 20
    corpus = text_bytes(rng, 8 * chunk)
    slots = rng.sample(range(size // chunk), data_bytes // chunk)
    with open(path, "wb") as f:
        f.truncate(size)
        for slot in sorted(slots):
            kind = rng.random()
            if kind < 0.25:
                data = os.urandom(chunk)
            elif kind < 0.8:
                start = rng.randrange(len(corpus) - chunk)
                data = corpus[start : start + chunk]
            else:
                data = bytes(chunk // 2) + os.urandom(chunk // 2)
            f.seek(slot * chunk)
            f.write(data)


@pytest.mark.slow
def test_timing_against_qemu_img(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints, never asserts, how long both writers take on a 256 MiB disk with 80 MiB data."""
    raw = tmp_path / "disk.raw"
    mixed_raw(raw, 256 << 20, 80 << 20, 4)
    start = time.perf_counter()
    ours = our_vmdk(raw, tmp_path / "ours.vmdk")
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    oracle = qemu_vmdk(raw, tmp_path / "qemu.vmdk")
    qemu_s = time.perf_counter() - start
    assert_valid_copy(raw, ours)
    with capsys.disabled():
        print(
            f"\nstreamOptimized 256 MiB/80 MiB data: imgpipe {ours_s:.2f}s "
            f"{ours.stat().st_size / 1e6:.1f} MB, qemu-img {qemu_s:.2f}s "
            f"{oracle.stat().st_size / 1e6:.1f} MB ({os.cpu_count()} cores)"
        )


def test_progress_reaches_100(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw"
    with raw.open("wb") as f:
        f.truncate(8 << 20)
        f.seek(3 << 20)
        f.write(os.urandom(2 << 20))
    seen: list[float] = []
    with (tmp_path / "p.vmdk").open("wb") as out:
        _write(raw, out, on_progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 100.0
