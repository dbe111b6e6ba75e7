"""Every on-disk format inspection recognises: how its start is told apart, what it holds for
inspection (a Linux filesystem, more volumes, a Windows volume, an EFI system partition) and
what opens it. A new format is one entry here, not branches in the inspection."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgpipe.guest.fs import btrfs, lvm, signatures, tree
from imgpipe.guest.fs.budget import Budget
from imgpipe.guest.fs.ext import ExtBlocks
from imgpipe.guest.fs.ext_debugfs import ExtTree
from imgpipe.guest.fs.xfs import XfsBlocks

Read = Callable[[int, int], bytes]
PROBE_BYTES = signatures.PROBE_BYTES


class Role(enum.Enum):
    LINUX = "a filesystem a Linux root can be on"
    VOLUMES = "a container of logical volumes"
    WINDOWS = "a Windows volume"
    ESP = "an EFI system partition"


@dataclass(frozen=True)
class Opened:
    """A filesystem opened by its reader: the tree mounted at `/`, and for btrfs which subvolume."""

    tree: tree.Tree
    subvolume: str = ""  # "root" (its path), "" for the top level or a filesystem without any
    why: str = ""  # how that subvolume was chosen


@dataclass(frozen=True, kw_only=True)
class Format:
    name: str
    role: Role
    probe: Callable[[bytes], bool]  # over the first PROBE_BYTES of a partition
    # in process, over a bounded random read, holding no more than the inspection's budget
    open: Callable[[Read, int, str, Budget], Opened] | None = None
    # from a full raw copy, for what `open` does not parse (its Unsupported)
    open_copy: Callable[[Path, str], Opened] | None = None
    volumes: Callable[[Read, int, str], tuple[list[lvm.LogicalVolume], list[str]]] | None = None


def _ext(read: Read, size: int, label: str, budget: Budget) -> Opened:
    return Opened(ExtBlocks(read, size, label, budget))


def _ext_copy(image: Path, label: str) -> Opened:
    return Opened(ExtTree(image, label))


def _xfs(read: Read, size: int, label: str, budget: Budget) -> Opened:
    return Opened(XfsBlocks(read, size, label, budget))


def _btrfs(read: Read, size: int, label: str, budget: Budget) -> Opened:
    """btrfs holds no directory cache: its tree nodes are bounded by the budget's reads alone."""
    fs = btrfs.Btrfs(read, size, label)
    guest, why = btrfs.root_tree(fs)
    names = {s.id: s.path for s in fs.subvolumes()}
    return Opened(guest, names.get(guest.subvol, ""), why)


def _magic(name: str) -> Callable[[bytes], bool]:
    return lambda head: signatures.filesystem(head) == name


# In probe order: an LVM label first (a PV may hold any magic further in), then the magics.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format(name="lvm", role=Role.VOLUMES, probe=lambda head: lvm.is_physical_volume(head[:2048]),
           volumes=lvm.logical_volumes),
    *(Format(name=name, role=Role.LINUX, probe=_magic(name), open=_ext, open_copy=_ext_copy)
      for name in ("ext2", "ext3", "ext4")),
    Format(name="xfs", role=Role.LINUX, probe=_magic("xfs"), open=_xfs),
    Format(name="btrfs", role=Role.LINUX, probe=_magic("btrfs"), open=_btrfs),
    Format(name="ntfs", role=Role.WINDOWS, probe=_magic("ntfs")),
    Format(name="vfat", role=Role.ESP, probe=_magic("vfat")),
)}


def probe(head: bytes) -> Format | None:
    """The format whose signature the partition's start carries, or None."""
    return next((f for f in FORMATS.values() if f.probe(head)), None)


def filesystem(head: bytes) -> Format | None:
    """The filesystem on a logical volume, by its magic alone (an LV holds no further PV)."""
    name = signatures.filesystem(head)
    return FORMATS.get(name) if name else None
