"""Real btrfs filesystems for the btrfs reader's tests, built by the kernel and btrfs-progs.

mkfs.btrfs 6.2 (Debian bookworm) has --rootdir but neither --subvol nor --compress, so the
Fedora-shaped filesystem is mounted on a loop device to create subvolumes and to write each
directory under its own compress-force algorithm (sync between, since compression happens
at writeback with the algorithm the mount has then).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

FS_UUID = "6d2b3f4e-57a1-4c1e-9d6c-0b5e0f1a2c3d"
OS_RELEASE = 'NAME="Fedora Linux"\nVERSION="40 (Cloud Edition)"\nID=fedora\nVERSION_ID=40\n'
FSTAB = (f"UUID={FS_UUID} / btrfs subvol=root,compress=zstd:1 0 0\n"
         f"UUID={FS_UUID} /home btrfs subvol=home,compress=zstd:1 0 0\n")
CROWDED = 5000
ALGORITHMS = ("zstd", "zlib", "lzo")


def text(seed: int, size: int) -> bytes:
    """Compressible but varied bytes (words, numbers, hex runs at every distance): LZO uses
    each of its copy encodings, not only the longest runs."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 12))) for _ in range(60)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        out += b" %d %s\n" % (rng.getrandbits(32), rng.randbytes(rng.randint(0, 6)).hex().encode())
    return bytes(out[:size])


def fedora_tree(root: Path) -> Path:
    """Host twin of the guest: root/ and home/ become the subvolumes of the same names."""
    sys = root / "root"
    (sys / "etc").mkdir(parents=True)
    (sys / "etc" / "os-release").write_text(OS_RELEASE)
    (sys / "etc" / "fstab").write_text(FSTAB)
    (sys / "usr" / "lib").mkdir(parents=True)
    (sys / "usr" / "lib" / "os-release").write_text(OS_RELEASE)
    (sys / "etc" / "system-release").symlink_to("../usr/lib/os-release")
    (sys / "bin").symlink_to("usr/bin")
    crowded = sys / "usr" / "share" / "crowded"
    crowded.mkdir(parents=True)
    for i in range(CROWDED):
        (crowded / f"entry-{i:05d}").write_bytes(b"%d\n" % i)
    for n, algorithm in enumerate(ALGORITHMS):
        where = sys / "var" / algorithm
        where.mkdir(parents=True)
        (where / "small.txt").write_bytes(text(n, 1600))  # an inline compressed extent, even for lzo
        (where / "big.txt").write_bytes(text(n, 700_000))  # several 128 KiB compressed extents
    (sys / "var" / "random.bin").write_bytes(os.urandom(200_000))  # stays uncompressed
    with (sys / "var" / "sparse.bin").open("wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"tail")
    with (sys / "var" / "prealloc.bin").open("wb") as f:
        f.write(b"\0" * (1 << 20))
    home = root / "home" / "fedora"
    home.mkdir(parents=True)
    (home / ".bashrc").write_text("# .bashrc\n")
    return root


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@contextlib.contextmanager
def mounted(image: Path, mnt: Path, options: str) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    _run("mount", "-o", f"loop,{options}", str(image), str(mnt))
    try:
        yield mnt
    finally:
        _run("umount", str(mnt))


def fedora(image: Path, host: Path, size: int = 256 << 20) -> Path:
    """The Fedora cloud layout: top level is the default, / is subvolume root, /home is home."""
    with image.open("wb") as f:
        f.truncate(size)
    _run("mkfs.btrfs", "-q", "-f", "-U", FS_UUID, str(image))
    with mounted(image, image.parent / (image.name + ".mnt"), "compress-force=zstd") as mnt:
        for subvol in ("root", "home"):
            _run("btrfs", "subvolume", "create", str(mnt / subvol))
        _run("cp", "-a", "--sparse=always", f"{host}/home/.", str(mnt / "home"))
        for entry in (host / "root").iterdir():
            if entry.name != "var":
                _run("cp", "-a", str(entry), str(mnt / "root"))
        (mnt / "root" / "var").mkdir()
        for algorithm in ALGORITHMS:
            _run("mount", "-o", f"remount,compress-force={algorithm}", str(mnt))
            _run("cp", "-a", str(host / "root" / "var" / algorithm), str(mnt / "root" / "var"))
            _run("sync", "-f", str(mnt))
        _run("cp", "-a", "--sparse=always", str(host / "root" / "var" / "random.bin"),
             str(host / "root" / "var" / "sparse.bin"), str(mnt / "root" / "var"))
        prealloc = mnt / "root" / "var" / "prealloc.bin"
        _run("fallocate", "-l", str(1 << 20), str(prealloc))
    return image


def rootdir(image: Path, host: Path, size: int = 128 << 20) -> Path:
    """mkfs.btrfs --rootdir: everything in the top level, uncompressed, as mkfs writes it."""
    with image.open("wb") as f:
        f.truncate(size)
    _run("mkfs.btrfs", "-q", "-f", "--rootdir", str(host), str(image))
    return image


def dump_tree(image: Path, tree: int) -> str:
    return subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", str(tree), str(image)],
                          check=True, capture_output=True, text=True).stdout


def restore(image: Path, subvol: int, dest: Path) -> Path:
    """btrfs restore (the reference reader, no mount) of one subvolume into dest."""
    dest.mkdir()
    subprocess.run(["btrfs", "restore", "-S", "-r", str(subvol), str(image), str(dest)], check=True,
                   capture_output=True)
    return dest
