"""The in-process btrfs reader against the host trees the filesystems were built from.

Fixtures are real: mkfs.btrfs --rootdir for the top level alone, and a Fedora cloud layout
(top level default, subvolumes root and home, zstd/zlib/lzo compressed files) written by
the kernel through a loop mount. Every entry, symlink target and byte is compared with the
host tree and with `btrfs restore` of the same image; `btrfs inspect-internal dump-tree`
proves the inline and regular compressed extents are there. Hostile copies of the image
must end in GuestInspectionError, quickly.
"""

from __future__ import annotations

import bisect
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import btrfs_fixture as bf
import pytest
import zstandard
from tree_compare import walk

from imgpipe import errors, nbd, qemu
from imgpipe.guest.fs import lzo, tree
from imgpipe.guest.fs.btrfs import Btrfs, Subvolume, root_tree

SECTOR = 512
SUPER_MAGIC_AT = (64 << 10) + 0x40
FS_START = 18432  # sectors: after a 1 MiB GPT gap and an 8 MiB first partition


@pytest.fixture(scope="module")
def fedora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw btrfs image, host tree) of the Fedora layout, built once for the module."""
    work = tmp_path_factory.mktemp("fedora")
    host = bf.fedora_tree(work / "host")
    return bf.fedora(work / "fs.raw", host), host


def _disk(fs_image: Path, dest: Path) -> qemu.Source:
    """A GPT disk in qcow2 with the filesystem in partition 2, and that partition's window."""
    size = fs_image.stat().st_size
    raw = dest.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(FS_START * SECTOR + size + (1 << 20))
    table = f"label: gpt\nstart=2048, size=16384, type=U\nstart={FS_START}, size={size // SECTOR}, type=L\n"
    subprocess.run(["sfdisk", "-q", str(raw)], input=table.encode(), check=True)
    subprocess.run(["dd", f"if={fs_image}", f"of={raw}", "bs=1M", f"seek={FS_START * SECTOR >> 20}",
                    "conv=notrunc,sparse", "status=none"], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest)], check=True)
    raw.unlink()
    return qemu.Source(dest, "qcow2", FS_START * SECTOR, size)


def test_fedora_layout_through_a_qcow2_partition_window(fedora: tuple[Path, Path], tmp_path: Path) -> None:
    image, host = fedora
    with nbd.export(_disk(image, tmp_path / "disk.qcow2"), "fs") as disk:
        fs = Btrfs(disk.read, disk.size, "fs")
        assert fs.subvolumes() == [Subvolume(256, "root"), Subvolume(257, "home")]
        assert fs.default_subvolume() == 5
        top = fs.tree(5)
        assert sorted(top.listdir("/")) == ["home", "root"] and top.lstat("/root") == tree.Node("dir")
        assert top.listdir("/root") == [] and top.lstat("/root/etc") is None  # another subvolume
        guest, evidence = root_tree(fs)
        assert evidence == "/etc/fstab of subvolume 256 (root) mounts subvolume 256 (root) at / (subvol=root)"
        assert tree.read(guest, "/etc/os-release") == ("/etc/os-release", bf.OS_RELEASE.encode())
        assert tree.resolve(guest, "/etc/system-release") == "/usr/lib/os-release"
        assert tree.resolve(guest, "/bin/sh") is None
        assert guest.lstat("/missing") is None and guest.lstat("/etc/os-release/x") is None
        assert guest.read("/var/zlib/big.txt", 1000) == (host / "root/var/zlib/big.txt").read_bytes()[:1000]
        assert len(guest.listdir("/usr/share/crowded")) == bf.CROWDED
        assert walk(guest, host / "root") >= bf.CROWDED + 20
        assert walk(fs.tree(257), host / "home") == 2


def test_a_default_subvolume_and_nested_subvolumes(fedora: tuple[Path, Path], tmp_path: Path) -> None:
    """set-default writes the root tree's "default" entry; a subvolume inside a directory of
    another has its path through that directory's INODE_REFs."""
    image = tmp_path / "fs.raw"
    subprocess.run(["cp", "--sparse=always", str(fedora[0]), str(image)], check=True)
    with bf.mounted(image, tmp_path / "mnt", "subvolid=5") as mnt:
        subprocess.run(["btrfs", "subvolume", "create", str(mnt / "home/fedora/nested")], check=True)
        (mnt / "home/fedora/nested/deep").mkdir()
        subprocess.run(["btrfs", "subvolume", "create", str(mnt / "home/fedora/nested/deep/er")], check=True)
        subprocess.run(["btrfs", "subvolume", "set-default", "256", str(mnt)], check=True)
    with nbd.export(qemu.Source(image, "raw"), "fs") as disk:
        fs = Btrfs(disk.read, disk.size, "fs")
        assert fs.subvolumes() == [Subvolume(256, "root"), Subvolume(257, "home"),
                                   Subvolume(258, "home/fedora/nested"), Subvolume(259, "home/fedora/nested/deep/er")]
        assert fs.default_subvolume() == 256
        guest, evidence = root_tree(fs)
        assert evidence == "default subvolume 256 (root) holds os-release"
        assert guest.listdir("/") == fs.tree(256).listdir("/")
        assert fs.tree(257).lstat("/fedora/nested") == tree.Node("dir")
        assert fs.tree(258).listdir("/deep") == ["er"]


def test_every_byte_matches_btrfs_restore(fedora: tuple[Path, Path], tmp_path: Path) -> None:
    image, host = fedora
    restored = bf.restore(image, 256, tmp_path / "restored")
    with nbd.export(qemu.Source(image, "raw"), "fs") as disk:
        guest = Btrfs(disk.read, disk.size, "fs").tree(256)
        assert walk(guest, restored) >= bf.CROWDED + 20
    assert (restored / "var" / "lzo" / "big.txt").read_bytes() == (host / "root/var/lzo/big.txt").read_bytes()


def test_dump_tree_shows_the_compressed_extents_read(fedora: tuple[Path, Path]) -> None:
    """The kernel did write inline and regular extents in each algorithm (compress-force alone
    does not prove it: the kernel may store data uncompressed when it does not shrink)."""
    names: dict[str, str] = {}
    extents: set[tuple[str, str, str]] = set()
    for item in re.split(r"\n\s*item \d+ ", bf.dump_tree(fedora[0], 256)):
        key = re.match(r"key \((\d+) (\w+) \d+\)", item)
        if key and key[2] == "INODE_REF":
            names[key[1]] = re.findall(r"name: (\S+)", item)[0]
        elif key and key[2] == "EXTENT_DATA":
            kind, packed = re.search(r"type \d \((\w+)\)", item), re.search(r"compression \d \((\w+)\)", item)
            assert kind, item
            extents.add((key[1], kind[1], packed[1] if packed else "none"))  # prealloc names none
    found = {(names[ino], kind, algorithm) for ino, kind, algorithm in extents}
    for algorithm in bf.ALGORITHMS:
        assert {("small.txt", "inline", algorithm), ("big.txt", "regular", algorithm)} <= found
    assert ("random.bin", "regular", "none") in found and ("prealloc.bin", "prealloc", "none") in found


def test_mkfs_rootdir_top_level(tmp_path: Path) -> None:
    host = tmp_path / "tree"
    (host / "etc").mkdir(parents=True)
    (host / "etc" / "os-release").write_text("ID=debian\n")
    crowded = host / "usr" / "share" / "crowded"
    crowded.mkdir(parents=True)
    for i in range(700):
        (crowded / f"entry-with-a-longish-name-{i:04d}").write_bytes(i.to_bytes(2, "little"))
    (host / "usr" / "big.bin").write_bytes(bytes(range(256)) * (5 << 12))
    with (host / "usr" / "sparse.bin").open("wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"tail")
    (host / "bin").symlink_to("usr/bin")
    (host / "slow").symlink_to("usr/share/" + "a-long-directory-name/" * 4 + "target")
    image = bf.rootdir(tmp_path / "fs.raw", host)
    restored = bf.restore(image, 5, tmp_path / "restored")
    with nbd.export(qemu.Source(image, "raw"), "fs") as disk:
        fs = Btrfs(disk.read, disk.size, "fs")
        assert fs.subvolumes() == [] and fs.default_subvolume() == 5
        guest, evidence = root_tree(fs)
        assert evidence == "default subvolume 5 (top level) holds os-release"
        assert walk(guest, host) == walk(guest, restored) >= 700 + 7


def test_lzo_overlapping_runs_and_its_output_bound() -> None:
    # 18: one literal; 0x20 + zero bytes + 1: a run of 31 + 255 * 2 + 1 + 2 at distance 1; 0x11 0 0: end
    stream = bytes([18]) + b"a" + bytes([0x20, 0, 0, 1, 0, 0]) + bytes([0x11, 0, 0])
    assert lzo.decompress(stream, 1000) == b"a" * (1 + 31 + 510 + 1 + 2)
    with pytest.raises(lzo.LzoError, match="output past 544 bytes"):
        lzo.decompress(stream, 544)
    with pytest.raises(lzo.LzoError, match="length past the bound"):  # stops counting zero bytes early
        lzo.decompress(stream, 100)
    with pytest.raises(lzo.LzoError, match="before the start"):
        lzo.decompress(bytes([18, 97, 0x40, 1, 0x11, 0, 0]), 1000)  # a copy from 9 bytes back after 1
    with pytest.raises(lzo.LzoError, match="truncated"):
        lzo.decompress(bytes([18, 97]), 1000)  # no end-of-stream marker


def _physical(fs: Btrfs, logical: int) -> int:
    at = bisect.bisect_right(fs._starts, logical) - 1
    return fs._chunks[at].physical + logical - fs._chunks[at].logical


def _leaf(fs: Btrfs, root: tuple[int, int], key: tuple[int, int, int]) -> tuple[int, int]:
    """(physical address of the leaf holding key, offset of its data in the leaf)."""
    logical, level = root
    while level:
        node = fs._node(logical, level)
        logical, level = node.refs[bisect.bisect_right(node.keys, key) - 1], level - 1
    node = fs._node(logical, 0)
    return _physical(fs, logical), node.refs[node.keys.index(key)]


def _poke(image: Path, offset: int, data: bytes) -> None:
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _first_extent(fs: Btrfs, path: str) -> tuple[int, int]:
    """(physical address, bytes on disk) of a file's first extent in subvolume root."""
    guest = fs.tree(256)
    entry = guest._lookup(path)
    assert entry is not None
    _, item = next(guest.items((entry.ino, 108, 0), (entry.ino, 108, 0)))
    disk, disk_bytes = struct.unpack_from("<QQ", item, 21)
    return _physical(fs, disk), disk_bytes


def _lzo_bomb(disk_bytes: int) -> bytes:
    segment = bytes([18]) + b"a" + bytes([0x20]) + bytes(40) + bytes([1, 0, 0, 0x11, 0, 0])  # ~10 KiB of "a"
    return struct.pack("<II", disk_bytes, len(segment)) + segment


def _mutations(fs: Btrfs) -> dict[str, tuple[int, bytes, str]]:
    """name: (offset, bytes written there, the error it must cause)."""
    subvol = fs.tree(256)
    root_node = _physical(fs, subvol.root[0])
    assert subvol.root[1] >= 1  # the crowded directory needs more than one leaf
    first_child = struct.unpack_from("<Q", fs._node(subvol.root[0], subvol.root[1]).raw, 0x65 + 17)[0]
    leaf, _ = _leaf(fs, subvol.root, fs._node(first_child, subvol.root[1] - 1).keys[0])
    item, item_at = _leaf(fs, fs._root, next(fs.items(fs._root, (256, 132, 0), (256, 132, (1 << 64) - 1)))[0])
    zlib_at, _ = _first_extent(fs, "/var/zlib/big.txt")
    zstd_at, _ = _first_extent(fs, "/var/zstd/big.txt")
    lzo_at, lzo_bytes = _first_extent(fs, "/var/lzo/big.txt")
    garbage = struct.pack("<II", lzo_bytes, lzo_bytes - 8) + bytes(range(7, 255, 3)) * 20
    return {
        "bad magic": (SUPER_MAGIC_AT, b"_BHRfS_X", "bad superblock magic"),
        "node points at itself": (root_node + 0x65 + 17, struct.pack("<Q", subvol.root[0]), "its parent says"),
        "child shared by two pointers": (root_node + 0x65 + 33 + 17, struct.pack("<Q", first_child),
                                         "outside its parent's range"),
        "item count past the node": (root_node + 0x60, struct.pack("<I", 1 << 30), "items"),
        "item data past the node": (leaf + 0x65 + 17, struct.pack("<I", 0xFFFFFF00), "lies outside the node"),
        "root past every chunk": (item + item_at + 176, struct.pack("<Q", 1 << 60), "is in no chunk"),
        "zlib bomb": (zlib_at, zlib.compress(bytes(1 << 20), 9), "inflates past its 131072 bytes"),
        "zstd bomb": (zstd_at, zstandard.ZstdCompressor().compress(bytes(1 << 20)), "inflates past its 131072"),
        "lzo bomb": (lzo_at, _lzo_bomb(lzo_bytes), r"\(length past the bound\)"),
        "garbage lzo": (lzo_at, garbage[:lzo_bytes], "bad compressed extent"),
    }


@pytest.mark.parametrize("name", ["bad magic", "node points at itself", "child shared by two pointers",
                                  "item count past the node", "item data past the node", "root past every chunk",
                                  "zlib bomb", "zstd bomb", "lzo bomb", "garbage lzo"])
def test_hostile_filesystems_are_corrupt_quickly(fedora: tuple[Path, Path], tmp_path: Path, name: str) -> None:
    image = tmp_path / "fs.raw"
    subprocess.run(["cp", "--sparse=always", str(fedora[0]), str(image)], check=True)
    with nbd.export(qemu.Source(image, "raw"), "fs") as disk:
        offset, data, message = _mutations(Btrfs(disk.read, disk.size, "fs"))[name]
    _poke(image, offset, data)
    started = time.monotonic()
    with (nbd.export(qemu.Source(image, "raw"), "fs") as disk,
          pytest.raises(errors.GuestInspectionError, match=f"^fs: corrupt btrfs filesystem: .*{message}")):
        fs = Btrfs(disk.read, disk.size, "fs")
        walk(root_tree(fs)[0], fedora[1] / "root")
    assert time.monotonic() - started < 30


BENCH = """
import resource, sys, time
from imgpipe import nbd, qemu
from imgpipe.guest.fs import tree
from imgpipe.guest.fs.btrfs import Btrfs, root_tree
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with nbd.export(qemu.Source(sys.argv[1], "raw"), "fs") as disk:
    started = time.monotonic()
    guest, evidence = root_tree(Btrfs(disk.read, disk.size, "fs"))
    found = tree.read(guest, "/etc/os-release")
    names = guest.listdir("/usr/share/crowded")
    took = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{took:.3f} s, peak RSS {peak / 1024:.1f} MiB ({before / 1024:.1f} MiB after imports), {len(names)} names,",
      found[1] if found else None, evidence)
"""


def test_time_and_memory_on_a_2_gib_fedora_filesystem(fedora: tuple[Path, Path], tmp_path: Path) -> None:
    image = bf.fedora(tmp_path / "fs.raw", fedora[1], 2 << 30)
    result = subprocess.run([sys.executable, "-c", BENCH, str(image)], check=True, capture_output=True, text=True)
    print("btrfs open + os-release + 5000-entry listdir:", result.stdout.strip())
    assert f"{bf.CROWDED} names" in result.stdout and "ID=fedora" in result.stdout
