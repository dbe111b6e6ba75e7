"""Named superblock checks (guest.fs.checks): a real filesystem made by its own mkfs, one field
rewritten as an attacker would, and `imgpipe inspect` must refuse it with exit 20 and one line
naming that field (issue 20)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgpipe.cli import app

MIB = 1 << 20
EXT_SB = 1024
BTRFS_SB = 64 << 10


def _mkfs(dest: Path, size: str, *argv: str) -> Path:
    tree = dest.parent / "tree"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "os-release").write_text("ID=debian\n")
    subprocess.run(["truncate", "-s", size, str(dest)], check=True)
    subprocess.run([*argv, str(dest)], check=True, capture_output=True)
    return dest


@pytest.fixture(scope="module")
def ext4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mkfs(tmp_path_factory.mktemp("ext4") / "fs.raw", "64M", "mkfs.ext4", "-q", "-F", "-b", "4096")


@pytest.fixture(scope="module")
def ext2_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mkfs(tmp_path_factory.mktemp("ext2") / "fs.raw", "16M", "mkfs.ext2", "-q", "-F", "-b", "1024")


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mkfs(tmp_path_factory.mktemp("xfs") / "fs.raw", "320M", "mkfs.xfs", "-q", "-f")


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("mkfs.btrfs (btrfs-progs) is not installed")
    return _mkfs(tmp_path_factory.mktemp("btrfs") / "fs.raw", "256M", "mkfs.btrfs", "-q", "-f")


def _refused(base: Path, tmp: Path, at: int, fmt: str, value: int, field: str,
             *more: tuple[int, str, int]) -> None:
    """`base` with `value` written at `at` (and `more` such patches) is refused naming `field`."""
    disk = tmp / base.name
    subprocess.run(["cp", "--sparse=always", str(base), str(disk)], check=True)
    with disk.open("r+b") as f:
        for offset, layout, number in ((at, fmt, value), *more):
            f.seek(offset)
            f.write(struct.pack(layout, number))
    result = CliRunner().invoke(app, ["inspect", str(disk), "--source-format", "raw"])
    assert result.exit_code == 20, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imgpipe: error: {disk}: "), result.output
    assert f": {field} is {value}: " in lines[0], result.output


@pytest.mark.parametrize(("offset", "fmt", "value", "field"), [
    (0x18, "<I", 7, "s_log_block_size"),
    (0x04, "<I", 0xFFFFFF00, "s_blocks_count"),
    (0x14, "<I", 1, "s_first_data_block"),
    (0x20, "<I", 1, "s_blocks_per_group"),  # issue 20's hostile disk
    (0x20, "<I", 8 * 4096 + 8, "s_blocks_per_group"),
    (0x58, "<H", 200, "s_inode_size"),
    (0xFE, "<H", 48, "s_desc_size"),
    (0x28, "<I", 1, "s_inodes_per_group"),
    (0x00, "<I", 12345, "s_inodes_count"),
])
def test_ext_superblock_field_is_named(ext4: Path, tmp_path: Path, offset: int, fmt: str, value: int,
                                       field: str) -> None:
    _refused(ext4, tmp_path, EXT_SB + offset, fmt, value, field)


def test_ext_descriptor_table_past_the_blocks(ext4: Path, tmp_path: Path) -> None:
    """One block, one group: its descriptor table (block 1) lies past the filesystem; the inode
    count made consistent so that this is the check that fails."""
    with ext4.open("rb") as f:
        f.seek(EXT_SB + 0x28)
        (inodes_per_group,) = struct.unpack("<I", f.read(4))
    _refused(ext4, tmp_path, EXT_SB + 0x04, "<I", 1, "s_blocks_count", (EXT_SB, "<I", inodes_per_group))


def test_ext_first_data_block_with_1k_blocks(ext2_1k: Path, tmp_path: Path) -> None:
    _refused(ext2_1k, tmp_path, EXT_SB + 0x14, "<I", 0, "s_first_data_block")


@pytest.mark.parametrize(("offset", "fmt", "value", "field"), [
    (120, "B", 17, "sb_blocklog"),
    (4, ">I", 8192, "sb_blocksize"),
    (122, "B", 12, "sb_inodelog"),
    (104, ">H", 1024, "sb_inodesize"),
    (106, ">H", 3, "sb_inopblock"),
    (123, "B", 1, "sb_inopblog"),
    (124, "B", 0, "sb_agblklog"),
    (84, ">I", 0, "sb_agblocks"),
    (88, ">I", 1000, "sb_agcount"),
    (192, "B", 5, "sb_dirblklog"),
])
def test_xfs_superblock_field_is_named(xfs: Path, tmp_path: Path, offset: int, fmt: str, value: int,
                                       field: str) -> None:
    _refused(xfs, tmp_path, offset, fmt, value, field)


def test_xfs_blocks_past_the_partition(xfs: Path, tmp_path: Path) -> None:
    """A filesystem larger than what holds it: the partition cut short (sb_dblocks as mkfs wrote it)."""
    disk = tmp_path / "short.raw"
    subprocess.run(["cp", "--sparse=always", str(xfs), str(disk)], check=True)
    with xfs.open("rb") as f:
        f.seek(8)
        dblocks = struct.unpack(">Q", f.read(8))[0]
    subprocess.run(["truncate", "-s", "160M", str(disk)], check=True)
    result = CliRunner().invoke(app, ["inspect", str(disk), "--source-format", "raw"])
    assert result.exit_code == 20, result.output
    assert f": sb_dblocks is {dblocks}: the blocks must fit in the partition's {160 * MIB} bytes" in result.output


@pytest.mark.parametrize(("offset", "fmt", "value", "field"), [
    (0x90, "<I", 1024, "sectorsize"),
    (0x94, "<I", 3 << 12, "nodesize"),
    (0x50, "<Q", 4096 * 1000 + 7, "root"),
    (0x58, "<Q", 4096 * 1000 + 7, "chunk_root"),
    (0xC6, "B", 9, "root_level"),
    (0xC7, "B", 8, "chunk_root_level"),
    (0xA0, "<I", 4096, "sys_chunk_array_size"),
    (0x70, "<Q", 1 << 40, "total_bytes"),
])
def test_btrfs_superblock_field_is_named(btrfs: Path, tmp_path: Path, offset: int, fmt: str, value: int,
                                         field: str) -> None:
    _refused(btrfs, tmp_path, BTRFS_SB + offset, fmt, value, field)

