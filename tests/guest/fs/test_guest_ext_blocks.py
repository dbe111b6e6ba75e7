"""The in-process ext2/3/4 reader against the trees mkfs -d built the filesystems from.

Every directory, file head and symlink the reader returns is compared with the host tree
the filesystem was made from, through qemu-nbd on a qcow2 of it, as inspection reads it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import guest_disks as gd
import pytest
from tree_compare import walk
from typer.testing import CliRunner

from imgpipe import errors, nbd, qemu
from imgpipe.cli import app
from imgpipe.guest.fs import tree
from imgpipe.guest.fs.ext import ExtBlocks, Unsupported

LONG_TARGET = "usr/share/" + "a-long-directory-name/" * 4 + "target"  # > 60 bytes: a slow symlink


def _host_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "lost+found").mkdir()  # mkfs makes it either way
    (root / "etc" / "os-release").write_text("ID=debian\n")
    crowded = root / "usr" / "share" / "crowded"
    crowded.mkdir(parents=True)
    for i in range(700):  # dozens of directory blocks: indirect blocks on ext2/3, htree after e2fsck -D
        (crowded / f"entry-with-a-longish-name-{i:04d}").write_bytes(i.to_bytes(2, "little"))
    big = bytes(range(256)) * (5 << 12)  # 5 MiB: double-indirect blocks with 1 KiB blocks
    (root / "usr" / "big.bin").write_bytes(big)
    with (root / "usr" / "sparse.bin").open("wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"tail")
    (root / "bin").symlink_to("usr/bin")
    (root / "slow").symlink_to(LONG_TARGET)
    return root


def _filesystem(tmp: Path, mkfs: list[str]) -> Path:
    raw = tmp / "fs.raw"
    subprocess.run([*mkfs, "-q", "-F", "-d", str(_host_tree(tmp / "tree")), str(raw), "64M"], check=True)
    subprocess.run(["e2fsck", "-fyD", str(raw)], check=False, capture_output=True)  # index directories
    image = tmp / "fs.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    return image


@pytest.mark.parametrize("mkfs", [["mkfs.ext2", "-b", "1024"], ["mkfs.ext3"], ["mkfs.ext4"],
                                  ["mkfs.ext4", "-O", "^64bit,^metadata_csum", "-I", "128"]],
                         ids=["ext2-1k", "ext3", "ext4", "ext4-32bit"])
def test_every_entry_and_byte_matches_the_source_tree(tmp_path: Path, mkfs: list[str]) -> None:
    image = _filesystem(tmp_path, mkfs)
    with nbd.export(qemu.Source(image, "qcow2"), "fs") as disk:
        guest = ExtBlocks(disk.read, disk.size, "fs")
        assert walk(guest, tmp_path / "tree") >= 700 + 8
        assert guest.read("/usr/big.bin", 1000) == (bytes(range(256)) * 4)[:1000]
        assert guest.lstat("/missing") is None and guest.lstat("/etc/os-release/x") is None
        assert tree.resolve(guest, "/usr/share/crowded/../../../etc/os-release") == "/etc/os-release"
        assert tree.resolve(guest, "/bin/sh") is None  # bin -> usr/bin, which is missing


def test_inline_data_is_left_to_debugfs_with_the_same_facts(tmp_path: Path) -> None:
    plain = gd.build(tmp_path / "plain.qcow2", gd.Guest())
    inline = gd.build(tmp_path / "inline.qcow2", gd.Guest(ext_features="inline_data"))
    facts = [_inspect(p) for p in (plain, inline)]
    assert facts[0] == facts[1] and facts[0]["os_release"]["value"]["ID"] == "debian"
    assert facts[0]["init"] is not None and facts[0]["drivers"]["value"]


def _inspect(path: Path) -> dict:
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    guest = json.loads(result.stdout)["guest"]
    for key in ("os_release", "init", "guest_agent", "drivers", "architecture"):
        if guest.get(key):
            guest[key]["evidence"] = guest[key]["evidence"].replace(str(path), "")
    return {k: guest[k] for k in ("os_release", "init", "guest_agent", "drivers", "architecture", "unchecked")}


def test_a_wrecked_directory_block_is_a_corrupt_filesystem(tmp_path: Path) -> None:
    image = _filesystem(tmp_path, ["mkfs.ext4"])
    raw = tmp_path / "fs.raw"
    with nbd.export(qemu.Source(image, "qcow2"), "fs") as disk:
        guest = ExtBlocks(disk.read, disk.size, "fs")
        root = guest._inode(2)
        block = next(guest._runs(root, 1))[1]
    with raw.open("r+b") as f:  # the root directory's first entry gets rec_len 0
        f.seek(block * guest.block_size + 4)
        f.write(b"\0\0")
    with nbd.export(qemu.Source(raw, "raw"), "fs") as disk:
        with pytest.raises(errors.GuestInspectionError, match="corrupt ext filesystem: directory inode 2"):
            ExtBlocks(disk.read, disk.size, "fs").listdir("/")


def test_features_it_does_not_parse_are_unsupported(tmp_path: Path) -> None:
    raw = tmp_path / "inline.raw"
    tree_dir = tmp_path / "t"
    (tree_dir / "etc").mkdir(parents=True)
    (tree_dir / "etc" / "os-release").write_text("ID=debian\n")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "inline_data", "-d", str(tree_dir), str(raw), "16M"], check=True)
    with nbd.export(qemu.Source(raw, "raw"), "fs") as disk:
        with pytest.raises(Unsupported, match="0x8000"):  # INCOMPAT_INLINE_DATA
            ExtBlocks(disk.read, disk.size, "fs")
