"""Payload wrappers around a converted disk: the Xen tgz and the docker save archive."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from imgpipe.errors import UnsafeImageError

XEN_MEMBER = "0.vhd"
# ISA-L level 2: close to zlib -6 in size at a fraction of the CPU (see DESIGN.md speed facts).
GZIP_LEVEL = 2
VHD_FOOTER = 512


def write_xen_tgz(vhd: Path, dest: BinaryIO) -> None:
    """XenAPI expects a gzip'd tar whose 0.vhd is the base of the VHD chain."""
    from isal import igzip  # only when a tgz is written: not on every start

    with igzip.IGzipFile(fileobj=dest, mode="wb", compresslevel=GZIP_LEVEL) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(vhd, arcname=XEN_MEMBER)


def xen_virtual_size(path: Path) -> int:
    """The guest disk size of a Xen tgz, from 0.vhd's footer (its last 512 bytes)."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            member = tar.getmember(XEN_MEMBER)
            f = tar.extractfile(member)
            if f is None or member.size < VHD_FOOTER:
                raise KeyError(XEN_MEMBER)
            f.seek(member.size - VHD_FOOTER)
            footer = f.read(VHD_FOOTER)
    except (tarfile.TarError, OSError, KeyError) as exc:
        raise UnsafeImageError(f"{path}: not a Xen tgz holding {XEN_MEMBER}") from exc
    if footer[:8] != b"conectix":
        raise UnsafeImageError(f"{path}: {XEN_MEMBER} has no VHD footer")
    return int.from_bytes(footer[48:56], "big")


def docker_repo_tag(path: Path) -> str:
    """Validate a `docker save` archive and return its first repo:tag (the Glance image name)."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            # `tar -C dir .` writes ./manifest.json: the same archive as far as docker load goes
            members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
            manifest = _read_json(tar, members.get("manifest.json"), "manifest.json", path)
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeImageError(f"{path}: not a docker save archive: {exc}") from exc
    if not isinstance(manifest, list) or not manifest:
        raise UnsafeImageError(f"{path}: manifest.json must list at least one image")
    tags: list[str] = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list):
            raise UnsafeImageError(f"{path}: manifest.json entry without Layers")
        missing = [m for m in [entry.get("Config"), *entry["Layers"]] if m not in members]
        if missing:
            raise UnsafeImageError(f"{path}: manifest.json names missing member {missing[0]}")
        tags += entry.get("RepoTags") or []
    if not tags:
        raise UnsafeImageError(f"{path}: no RepoTags: docker needs the image name to be repo:tag")
    return str(tags[0])


def _read_json(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str, path: Path) -> Any:
    f = tar.extractfile(member) if member is not None else None
    if f is None:
        raise UnsafeImageError(f"{path}: not a docker save archive: no {name}")
    try:
        return json.load(f)
    except ValueError as exc:
        raise UnsafeImageError(f"{path}: {name} is not valid JSON") from exc
