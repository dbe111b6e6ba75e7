"""The in-process XFS reader against the host trees mkfs.xfs -p built the filesystems from.

Every directory, file byte and symlink it returns is compared with the host tree, read
through qemu-nbd on a qcow2 partition window as inspection reads it, and every listing and
fork format it claims to parse is confirmed with xfs_db on the same image. Hostile images
are real images with one field rewritten by xfs_db -x.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xfs_fixtures as xf
from tree_compare import walk

from imgpipe import errors, nbd
from imgpipe.errors import OverBudgetError
from imgpipe.guest.fs import tree
from imgpipe.guest.fs.ext import Unsupported
from imgpipe.guest.fs.xfs import XfsBlocks
from imgpipe.source.inspect import inspect_image

LONG_TARGET = "usr/share/" + "a-long-directory-name/" * 44 + "target"  # 984 bytes: beyond any literal area
FS_SIZE = 512 << 20  # mkfs.xfs wants 300 MB; the file stays sparse
VARIANTS = {  # mkfs options, and the fork format mkfs -p gives the 3000-entry directory
    "v5": ((), "btree"),
    "v5-nrext64": (("-i", "nrext64=1"), "btree"),  # 64-bit extent counters in files the kernel writes
    "v5-2k-blocks-1k-inodes-8k-dirs": (("-b", "size=2048", "-i", "size=1024", "-n", "size=8192"), "extents"),
    "v4": (("-m", "crc=0"), "btree"),
    "v4-no-ftype": (("-m", "crc=0", "-n", "ftype=0"), "btree"),
}
DIR_FORMS = {"/etc/small": "local", "/usr/share/medium": "block", "/usr/share/leafy": "leaf",
             "/usr/share/crowded": "node"}


def _host_tree(root: Path, remote_symlink: bool = True) -> Path:
    """The tree mkfs -p copies; v5 remote symlinks are left to the kernel (see the last test)."""
    (root / "etc" / "small").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=debian\n")
    for name in ("a", "b", "c"):
        (root / "etc" / "small" / name).write_text(name)
    share = root / "usr" / "share"
    for folder, count, width in (("medium", 40, 24), ("leafy", 200, 60), ("crowded", 3000, 40)):
        (share / folder).mkdir(parents=True)
        for i in range(count):
            (share / folder / f"{i:05d}".ljust(width, "x")).write_bytes(i.to_bytes(2, "little"))
    (root / "usr" / "big.bin").write_bytes(bytes(range(256)) * (5 << 12))  # 5 MiB, several blocks
    (root / "usr" / "empty").write_bytes(b"")
    (root / "bin").symlink_to("usr/bin")
    if remote_symlink:
        (root / "slow").symlink_to(LONG_TARGET)
    return root


def _add_through_a_mount(raw: Path, host: Path, block: int) -> None:
    """Holes, unwritten extents and a fragmented file: mkfs -p writes every file whole."""
    with xf.mounted(raw) as mnt:
        for base in (mnt, host):
            (base / "slow").symlink_to(LONG_TARGET)
            with (base / "usr" / "sparse.bin").open("wb") as f:
                f.write(b"head")
                f.seek(3 << 20)
                f.write(b"tail")
            fd = os.open(base / "usr" / "fragmented.bin", os.O_CREAT | os.O_WRONLY)
            for i in range(400):  # a hole after every block: 400 extents, more than any inode holds
                os.pwrite(fd, bytes([i % 251]) * block, 2 * i * block)
            os.close(fd)
            fd = os.open(base / "usr" / "unwritten.bin", os.O_CREAT | os.O_WRONLY)
            os.posix_fallocate(fd, 0, 1 << 20)
            os.pwrite(fd, b"written", 512 << 10)
            os.fsync(fd)
            os.close(fd)


def _partitioned_qcow2(fs: Path, dest: Path) -> Path:
    """A GPT disk holding the filesystem in partition 1 at 1 MiB, compressed qcow2."""
    disk = dest.with_suffix(".raw")
    with disk.open("wb") as f:
        f.truncate(fs.stat().st_size + (2 << 20))
    table = f"label: gpt\nstart=2048, size={fs.stat().st_size // 512}, type=L\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=table, text=True, check=True)
    subprocess.run(["dd", f"if={fs}", f"of={disk}", "bs=1M", "seek=1", "conv=sparse,notrunc", "status=none"],
                   check=True)
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(disk), str(dest)], check=True)
    disk.unlink()
    return dest


@contextlib.contextmanager
def _window(image: Path) -> Iterator[XfsBlocks]:
    """The reader over partition 1 through qemu-nbd, exactly as guest inspection opens it."""
    info = inspect_image(image)
    with nbd.export(info.window(info.partitions[0]), "p1") as disk:
        yield XfsBlocks(disk.read, disk.size, "p1")


def _file_reader(raw: Path) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        with raw.open("rb") as f:
            f.seek(offset)
            return f.read(length)
    return read


@contextlib.contextmanager
def _quickly(seconds: int = 10) -> Iterator[None]:
    """Hostile input must end promptly: a hang becomes a failure, not a stuck suite."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _dir_form(raw: Path, path: str, block: int) -> str:
    """Shortform, block, leaf or node, from where xfs_db says the fork maps blocks: the hash
    index lives at 32 GiB into a directory, the free index of a node directory at 64 GiB."""
    ino = xf.inode_number(raw, path)
    if xf.fork_format(raw, ino) == xf.FORMATS["local"]:
        return "local"
    offsets = [offset for offset, _, _, _ in xf.bmap(raw, ino)]
    if max(offsets) >= (64 << 30) // block:
        return "node"
    return "leaf" if max(offsets) >= (32 << 30) // block else "block"


@pytest.mark.parametrize(("options", "crowded_fork"), VARIANTS.values(), ids=VARIANTS.keys())
def test_every_entry_and_byte_matches_the_source_tree(tmp_path: Path, options: tuple[str, ...],
                                                      crowded_fork: str) -> None:
    v5 = "crc=0" not in options
    host = _host_tree(tmp_path / "tree", remote_symlink=not v5)
    raw = xf.mkfs(tmp_path / "fs.raw", host, FS_SIZE, options)
    block = int(xf.db(raw, "sb 0", "print blocksize").split("=")[1])
    if v5:  # this kernel mounts no v4 filesystem
        _add_through_a_mount(raw, host, block)
    forms = {path: _dir_form(raw, path, block) for path in DIR_FORMS}
    assert forms == DIR_FORMS
    assert xf.fork_format(raw, xf.inode_number(raw, "/usr/share/crowded")) == xf.FORMATS[crowded_fork]
    assert xf.fork_format(raw, xf.inode_number(raw, "/bin")) == xf.FORMATS["local"]
    assert xf.fork_format(raw, xf.inode_number(raw, "/slow")) == xf.FORMATS["extents"]  # a remote symlink
    if v5:
        fragmented = xf.inode_number(raw, "/usr/fragmented.bin")
        assert xf.fork_format(raw, fragmented) == xf.FORMATS["btree"]
        assert xf.field(raw, fragmented, "v3.nrext64") == ("1" if "nrext64=1" in options else "0")
        assert any(unwritten for *_, unwritten in xf.bmap(raw, xf.inode_number(raw, "/usr/unwritten.bin")))
    with _window(_partitioned_qcow2(raw, tmp_path / "disk.qcow2")) as guest:
        assert walk(guest, host) >= 3000 + 200 + 40 + 10
        for path in ["/", "/etc", *DIR_FORMS]:
            assert sorted(guest.listdir(path)) == sorted(xf.listing(raw, path)), path
        assert guest.read("/usr/big.bin", 1000) == (bytes(range(256)) * 4)[:1000]
        assert guest.lstat("/missing") is None and guest.lstat("/etc/os-release/x") is None
        assert tree.resolve(guest, "/usr/share/crowded/../../../etc/os-release") == "/etc/os-release"
        assert tree.resolve(guest, "/bin/sh") is None  # bin -> usr/bin, which is missing


def _deep_btree_image(tmp_path: Path) -> tuple[Path, int, bytes]:
    """1 KiB blocks and 1500 one-block extents: a bmap btree of two levels below the inode root."""
    host = tmp_path / "tree"
    (host / "etc").mkdir(parents=True)
    (host / "etc" / "os-release").write_text("ID=debian\n")
    raw = xf.mkfs(tmp_path / "fs.raw", host, FS_SIZE, ("-b", "size=1024"))
    expected = bytearray(2 * 1500 * 1024)
    with xf.mounted(raw) as mnt:
        fd = os.open(mnt / "deep.bin", os.O_CREAT | os.O_WRONLY)
        for i in range(1500):
            os.pwrite(fd, bytes([i % 251]) * 1024, 2 * i * 1024)
            expected[2 * i * 1024:(2 * i + 1) * 1024] = bytes([i % 251]) * 1024
        os.close(fd)
        (mnt / "slow").symlink_to(LONG_TARGET)  # two remote blocks of 968 bytes each
    return raw, xf.inode_number(raw, "/deep.bin"), bytes(expected[:2 * 1499 * 1024 + 1024])


def test_a_two_level_bmap_btree_reads_whole_and_a_self_pointer_is_a_loop(tmp_path: Path) -> None:
    raw, ino, expected = _deep_btree_image(tmp_path)
    assert xf.field(raw, ino, "u3.bmbt.level") == "2"
    guest = XfsBlocks(_file_reader(raw), FS_SIZE, "fs")
    assert guest.read("/deep.bin", 1 << 30) == expected
    assert guest.read("/deep.bin", 3000) == expected[:3000]
    assert sum(count for _, _, count, _ in xf.bmap(raw, xf.inode_number(raw, "/slow"))) == 2
    assert guest.lstat("/slow") == tree.Node("symlink", LONG_TARGET)
    node = int(xf.field(raw, ino, "u3.bmbt.ptrs[1]"))
    xf.db(raw, f"inode {ino}", "addr u3.bmbt.ptrs[1]", f"write ptrs[2] {node}", expert=True)
    with _quickly(), pytest.raises(errors.GuestInspectionError, match=f"fs: corrupt xfs filesystem: inode {ino}: "
                                                                       f"bmap btree block {node} is reached twice"):
        XfsBlocks(_file_reader(raw), FS_SIZE, "fs").read("/deep.bin", 1 << 30)
    xf.db(raw, f"inode {ino}", "write u3.bmbt.level 50", expert=True)
    with _quickly(), pytest.raises(errors.GuestInspectionError, match="bmap btree root of level 50"):
        XfsBlocks(_file_reader(raw), FS_SIZE, "fs").read("/deep.bin", 10)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """A v5 image of the standard tree, plus a directory that will be made to contain itself."""
    host = _host_tree(tmp_path / "tree", remote_symlink=False)
    (host / "loop" / "inner").mkdir(parents=True)
    return xf.mkfs(tmp_path / "fs.raw", host, FS_SIZE)


def _fails(raw: Path, action: Callable[[XfsBlocks], object], why: str) -> None:
    with _quickly(), pytest.raises(errors.GuestInspectionError, match=f"^fs: corrupt xfs filesystem: {why}"):
        action(XfsBlocks(_file_reader(raw), FS_SIZE, "fs"))


def test_a_bad_superblock_magic_is_corrupt(plain: Path) -> None:
    with plain.open("r+b") as f:
        f.write(b"XFSC")
    _fails(plain, lambda guest: None, "bad superblock magic")


def test_a_directory_block_beyond_the_end_is_corrupt(plain: Path) -> None:
    ino = xf.inode_number(plain, "/usr/share/medium")
    xf.db(plain, f"inode {ino}", "write u3.bmx[0].startblock 4000000000", expert=True)
    _fails(plain, lambda guest: guest.listdir("/usr/share/medium"), "block 4000000000 is outside the filesystem")


def test_a_directory_over_the_size_bound_is_over_budget(plain: Path) -> None:
    ino = xf.inode_number(plain, "/usr/share/crowded")
    xf.db(plain, f"inode {ino}", f"write core.size {1 << 40}", expert=True)
    with _quickly(), pytest.raises(OverBudgetError, match=f"^fs: directory inode {ino} is 1.0 TiB, over the "
                                   r"8.0 MiB budget for one directory \(IMGPIPE_INSPECT_DIRECTORY\)$"):
        XfsBlocks(_file_reader(plain), FS_SIZE, "fs").lstat("/usr/share/crowded/x")


def test_an_absurd_extent_count_is_corrupt(plain: Path) -> None:
    ino = xf.inode_number(plain, "/usr/big.bin")
    xf.db(plain, f"inode {ino}", "write core.nextents 4000000", expert=True)
    _fails(plain, lambda guest: guest.read("/usr/big.bin", 1 << 30),
           f"inode {ino} claims 4000000 extents in a 336-byte fork")


def test_a_directory_inside_itself_is_corrupt(plain: Path) -> None:
    loop = xf.inode_number(plain, "/loop")
    xf.db(plain, f"inode {loop}", f"write u3.sfdir3.list[0].inumber.i4 {loop}", expert=True)
    guest = XfsBlocks(_file_reader(plain), FS_SIZE, "fs")
    assert guest.listdir("/loop/inner") == ["inner"]  # /loop/inner is /loop again
    _fails(plain, lambda guest: tree.resolve(guest, "/loop" + "/inner" * 5000 + "/x"),
           f"directory inode {loop} is inside itself")


def test_features_it_does_not_parse_are_unsupported(plain: Path) -> None:
    features = int(xf.db(plain, "sb 0", "print features_incompat").split("=")[1], 16)
    with plain.open("r+b") as f:  # xfs_db's verifier refuses the bit its version does not know
        f.seek(216)  # sb_features_incompat
        f.write((features | 0x100).to_bytes(4, "big"))  # the metadata directory tree
    with pytest.raises(Unsupported, match="0x100"):
        XfsBlocks(_file_reader(plain), FS_SIZE, "fs")


def test_a_v5_remote_symlink_without_its_block_header_is_corrupt(tmp_path: Path) -> None:
    """mkfs.xfs 6.1 -p writes a long v5 symlink target with no XSLM header; xfs_repair agrees it is bad."""
    host = tmp_path / "tree"
    host.mkdir()
    (host / "slow").symlink_to(LONG_TARGET)
    raw = xf.mkfs(tmp_path / "fs.raw", host, FS_SIZE)
    repair = subprocess.run(["xfs_repair", "-n", str(raw)], check=False, capture_output=True, text=True)
    assert repair.returncode and "bad symlink header" in repair.stdout + repair.stderr
    ino = xf.inode_number(raw, "/slow")
    _fails(raw, lambda guest: guest.lstat("/slow"), f"symlink inode {ino}: bad remote block")


_MEASURE = """
import sys, time
from pathlib import Path
from imgpipe import nbd
from imgpipe.guest.fs import tree
from imgpipe.guest.fs.xfs import XfsBlocks
from imgpipe.source.inspect import inspect_image
start = time.monotonic()
asked = []
info = inspect_image(Path(sys.argv[1]))
with nbd.export(info.window(info.partitions[0]), "p1") as disk:
    def read(offset, length):
        asked.append(length)
        return disk.read(offset, length)
    guest = XfsBlocks(read, disk.size, "p1")
    release = tree.read(guest, "/etc/os-release")
    names = tree.listdir(guest, "/usr/lib/many")
print(release[1].decode().strip(), len(names[1]), f"{time.monotonic() - start:.3f}", len(asked), sum(asked))
"""


def test_cost_of_a_2_gib_filesystem(tmp_path: Path) -> None:
    """Printed, not asserted: the time and peak RSS to open it, read os-release, list 5000 names."""
    host = tmp_path / "tree"
    (host / "etc").mkdir(parents=True)
    (host / "etc" / "os-release").write_text("ID=debian\n")
    (host / "usr" / "lib" / "many").mkdir(parents=True)
    for i in range(5000):
        (host / "usr" / "lib" / "many" / f"module-{i:05d}.ko").write_bytes(b"")
    raw = xf.mkfs(tmp_path / "fs.raw", host, 2 << 30)
    image = _partitioned_qcow2(raw, tmp_path / "disk.qcow2")
    run = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", _MEASURE, str(image)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parents[3])
    release, count, seconds, reads, read_bytes = run.stdout.split()
    assert (release, count) == ("ID=debian", "5000")
    peak = next(line for line in run.stderr.splitlines() if "Maximum resident set size" in line).split(":")[1]
    wall = next(line for line in run.stderr.splitlines() if "Elapsed (wall clock)" in line).rsplit(" ", 1)[1]
    print(f"\n2 GiB XFS over qemu-nbd (qcow2 partition window): open + /etc/os-release + list 5000 names: "
          f"{seconds} s in-process ({wall} with interpreter start), {reads} reads of {int(read_bytes) >> 10} KiB, "
          f"peak RSS of the largest of python and qemu-nbd {int(peak) >> 10} MiB")
