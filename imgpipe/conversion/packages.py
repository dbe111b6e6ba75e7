"""How each package kind (imgpipe.packages) is written around a converted disk and read back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imgpipe.conversion import ova, packaging

# (converted disk, destination, the package's final path, virtual size, image properties)
Writer = Callable[[Path, BinaryIO, Path, int, dict[str, str]], None]


@dataclass(frozen=True, kw_only=True)
class Packager:
    write: Writer | None  # None: nothing is written (the source is the upload)
    virtual_size: Callable[[Path], int]  # of an already built package, for `upload`
    # The disk file name the wrapped vmdk's descriptor states, given the package's path.
    disk_name: Callable[[Path], str] = lambda path: path.name


def _xen(disk: Path, dest: BinaryIO, final: Path, capacity: int, properties: dict[str, str]) -> None:
    packaging.write_xen_tgz(disk, dest)


def _ova(disk: Path, dest: BinaryIO, final: Path, capacity: int, properties: dict[str, str]) -> None:
    ova.write_ova(disk, dest, final, capacity, properties)


def _docker_size(path: Path) -> int:
    packaging.docker_repo_tag(path)  # validates the archive
    return path.stat().st_size


PACKAGERS: dict[str, Packager] = {
    "xen-ovf-tgz": Packager(write=_xen, virtual_size=packaging.xen_virtual_size),
    "vmware-ova": Packager(write=_ova, virtual_size=ova.virtual_size,
                           disk_name=lambda path: ova.member_names(path)[1]),
    "docker-archive": Packager(write=None, virtual_size=_docker_size),
}
