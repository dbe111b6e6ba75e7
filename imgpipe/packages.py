"""Package kinds as data: what a profile's upload wraps, and what each stage does with it.

A profile without a package uploads the converted disk itself. The three kinds below differ
only in these fields; conversion/packages.py holds how each is written and read back. A new
kind is one entry here and one there, not a branch in every stage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Kind:
    name: str
    disk_format: str
    container_format: str
    # False: the source already is the upload (a docker save archive): nothing is converted,
    # no guest is read, and its name comes from the archive.
    converts: bool = True
    extension: str = ""  # the packaged output's file extension
    subformat: str | None = None  # the vmdk subformat the package must wrap
    # "" when a boot check boots the disk the package wraps, else why it cannot be booted.
    not_bootable: str = ""


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(name="xen-ovf-tgz", disk_format="vhd", container_format="ovf", extension="vhd.tgz",
         not_bootable="a tgz for XenAPI: not applicable"),
    Kind(name="vmware-ova", disk_format="vmdk", container_format="ova", extension="ova",
         subformat="streamOptimized"),
    Kind(name="docker-archive", disk_format="raw", container_format="docker", converts=False,
         not_bootable="a docker archive: not applicable"),
)}
