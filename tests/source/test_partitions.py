from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imgpipe.source import partitions

MIB = 1 << 20


def _disk(tmp_path: Path, table: str, size_mib: int = 64) -> tuple[bytes, int]:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(["sfdisk", "-q", str(disk)], input=table.encode(), check=True)
    return disk.read_bytes()[:partitions.HEAD_BYTES], size_mib * MIB


def test_gpt_kinds_and_root(tmp_path: Path) -> None:
    head, size = _disk(tmp_path, "label: gpt\n,8M,U\n,16M,L\n,,L\n")
    table, parts = partitions.parse(head, size)
    assert table == "gpt"
    assert [p.kind for p in parts] == ["efi", "linux", "linux"]
    assert parts[0].start == MIB and parts[0].size == 8 * MIB
    assert partitions.root_partition(parts).number == 3  # the largest Linux partition


def test_gpt_typed_root_wins_over_size(tmp_path: Path) -> None:
    root_type = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
    head, size = _disk(tmp_path, f"label: gpt\n,8M,{root_type}\n,,L\n")
    _, parts = partitions.parse(head, size)
    assert partitions.root_partition(parts).number == 1


def test_mbr(tmp_path: Path) -> None:
    head, size = _disk(tmp_path, "label: dos\n,8M,ef\n,,83\n")
    table, parts = partitions.parse(head, size)
    assert table == "mbr"
    assert [(p.number, p.kind) for p in parts] == [(1, "efi"), (2, "linux")]


def test_no_table() -> None:
    assert partitions.parse(bytes(4096), 4096) == (None, [])


def test_partition_past_end_is_rejected(tmp_path: Path) -> None:
    head, size = _disk(tmp_path, "label: gpt\n,,L\n")
    with pytest.raises(partitions.PartitionTableError, match="past the end"):
        partitions.parse(head, size // 2)


def test_no_linux_partition(tmp_path: Path) -> None:
    head, size = _disk(tmp_path, "label: gpt\n,,U\n")
    _, parts = partitions.parse(head, size)
    with pytest.raises(partitions.PartitionTableError, match="no Linux"):
        partitions.root_partition(parts)
