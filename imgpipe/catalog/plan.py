"""A catalog's work: units, shards, a look at every cloud, and the plan built from it.

`catalog plan` and `catalog sync` share this code, so the plan shows exactly what a sync
does: sync uploads only what the plan calls missing (publish's own no-op check cannot see
hidden images) and rotates from a fresh look after its uploads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgpipe import retry, signing
from imgpipe.catalog import rotation
from imgpipe.catalog.download import Checksums
from imgpipe.catalog.model import Catalog, Image, Signing, Version
from imgpipe.catalog.rotation import Action
from imgpipe.cloud import discovery, glance, signature
from imgpipe.cloud.clouds import Cloud
from imgpipe.cloud.import_method import Placement
from imgpipe.cloud.upload import PROFILE_KEY, SOURCE_KEY
from imgpipe.errors import ImgpipeError
from imgpipe.signing import Signer

Connect = Callable[[str], Cloud]


@dataclass(frozen=True)
class Unit:
    """One source version of one catalog image: downloaded, converted and uploaded together."""

    image: Image
    version: Version

    @property
    def key(self) -> str:
        return f"{self.image.name}@{self.version.version}"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None, env: Mapping[str, str]) -> Shard | None:
    """--shard I/N (0-based), else a Kubernetes Indexed Job's JOB_COMPLETION_INDEX/JOB_COMPLETIONS."""
    if text is None:
        job_index = env.get("JOB_COMPLETION_INDEX")
        if job_index is None:
            return None
        if "JOB_COMPLETIONS" not in env:
            raise ValueError("JOB_COMPLETION_INDEX is set but JOB_COMPLETIONS is not: "
                             "set it to the Job's spec.completions")
        text = f"{job_index}/{env['JOB_COMPLETIONS']}"
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    return None if count == 1 else Shard(index, count)


def units(catalog: Catalog, shard: Shard | None = None) -> list[Unit]:
    """The versions to publish (each image's newest `keep`), in a stable order; a shard takes
    every N-th, so the shards of one catalog cover each unit exactly once."""
    every = sorted((Unit(image, v) for image in catalog.images for v in image.wanted()), key=lambda u: u.key)
    return every if shard is None else every[shard.index::shard.count]


@dataclass
class Scope:
    """What one run covers: units to publish, images to look at (and rotate), versions to resolve."""

    todo: list[Unit]
    images: list[Image]
    rotate: bool

    @property
    def versions(self) -> list[tuple[Image, Version]]:
        """Whose sha256 to resolve: the ones to publish, and for rotation every image's wanted ones."""
        if self.rotate:
            return [(i, v) for i in self.images for v in i.wanted()]
        return [(u.image, u.version) for u in self.todo]


def scope(catalog: Catalog, shard: Shard | None, *, publish: bool = True, rotate: bool = True) -> Scope:
    """A shard never rotates: rotation must see every shard's uploads, so it runs once after them."""
    todo = units(catalog, shard) if publish else []
    if rotate and shard is None:
        return Scope(todo, list(catalog.images), True)
    images = {u.image.name: u.image for u in todo}
    return Scope(todo, list(images.values()), False)


def signers_of(todo: list[Unit]) -> dict[str, Signer]:
    """Each image's signer by image name; a key used by several images is read once."""
    loaded: dict[Signing, Signer] = {}
    for unit in todo:
        how = unit.image.signing
        if how is not None and how not in loaded:
            password = signing.read_password(Path(how.password_file) if how.password_file else None,
                                             dict(os.environ))
            loaded[how] = signing.load(Path(how.key), password=password,
                                       certificate=Path(how.certificate) if how.certificate else None,
                                       certificate_id=how.certificate_id, hash_method=how.hash_method)
    return {u.image.name: loaded[u.image.signing] for u in todo if u.image.signing is not None}


@dataclass
class Survey:
    """What a run knows before it acts: reachable clouds, checksums, and each cloud's images."""

    clouds: dict[str, Cloud] = field(default_factory=dict)
    shas: dict[str, dict[str, str]] = field(default_factory=dict)  # image -> version -> sha256
    states: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # image -> cloud -> images
    failures: list[str] = field(default_factory=list)
    # The catalog's Catalog.placement: which stores (and method) each image wants on each cloud.
    placement: Callable[[Image, str], Placement] = lambda image, cloud: Placement()

    def listed(self, action: Action) -> dict[str, Any]:
        """The image an action on a published image acts on, as this survey listed it."""
        return next(i for i in self.states[action.image][action.cloud] if i["id"] == action.image_id)


def survey(work: Scope, connect: Connect, checksums: Checksums,
           placement: Callable[[Image, str], Placement]) -> Survey:
    """Connect, resolve checksums and list images; a cloud that fails is left out and reported."""
    seen = Survey(placement=placement)
    for image, version in work.versions:
        try:
            seen.shas.setdefault(image.name, {})[version.version] = checksums.expected(version)
        except ImgpipeError as exc:
            seen.failures.append(f"{image.name}@{version.version}: {exc}")
    for name in sorted({c for image in work.images for c in image.clouds}):
        try:
            seen.clouds[name] = connect(name)
        except ImgpipeError as exc:
            seen.failures.append(str(exc))  # names the cloud
    look(seen, work.images)
    return seen


def look(seen: Survey, images: list[Image]) -> None:
    """(Re)list every image's images on every reachable cloud; drop clouds that do not answer."""
    seen.states = {}
    for name, cloud in list(seen.clouds.items()):
        try:
            for image, mine in rotation.owned(cloud, [i for i in images if name in i.clouds]).items():
                seen.states.setdefault(image, {})[name] = mine
        except ImgpipeError as exc:
            seen.failures.append(str(exc))  # names the cloud
            del seen.clouds[name]
            for by_cloud in seen.states.values():
                by_cloud.pop(name, None)


def plan(todo: list[Unit], seen: Survey, rotate: list[Image]) -> list[Action]:
    """Create what is missing (discarding what an interrupted run left half-uploaded), keep what
    exists; then, for `rotate`, what retention changes."""
    actions: list[Action] = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for unit in todo:
        image, label = unit.image, unit.version.version
        sha = seen.shas.get(image.name, {}).get(label)
        if sha is None:
            continue  # its checksum failed: already reported
        for cloud, existing in seen.states.get(image.name, {}).items():
            for profile in image.profiles:
                group = groups.setdefault((image.name, cloud, profile),
                                          [i for i in existing if i[PROFILE_KEY] == profile])
                name = image.image_name(profile, label)
                found = next((i for i in group if i["name"] == name and i[SOURCE_KEY] == sha
                              and i["status"] == glance.ACTIVE), None)
                if found:
                    missing = _missing_stores(seen, image, cloud, found)
                    actions.append(Action(cloud, image.name, profile, name, label,
                                          "copy" if missing else "unchanged", found["id"],
                                          stores=missing))
                    continue
                actions += [Action(cloud, image.name, profile, name, label, "discard", i["id"]) for i in group
                            if i["name"] == name and i[SOURCE_KEY] == sha and i["status"] in glance.IN_PROGRESS]
                actions.append(Action(cloud, image.name, profile, name, label, "create"))
                group.append(rotation.planned(image, profile, label, sha))
    for image in rotate:
        shas = seen.shas.get(image.name, {})
        for cloud, existing in seen.states.get(image.name, {}).items():
            for profile in image.profiles:
                group = groups.get((image.name, cloud, profile),
                                   [i for i in existing if i[PROFILE_KEY] == profile])
                actions += rotation.retention(cloud, image, profile, group, shas)
    return actions


def _missing_stores(seen: Survey, image: Image, cloud: str, found: dict[str, Any]) -> list[str]:
    """The wanted stores an existing identical image is not in yet: a copy-image, not an upload."""
    asked = seen.placement(image, cloud)
    if asked.all_stores:
        try:
            wanted = [s.id for s in discovery.stores(seen.clouds[cloud])]
        except ImgpipeError as exc:  # asked once per cloud and run, so reported once
            if str(exc) not in seen.failures:
                seen.failures.append(str(exc))
            return []
    else:
        wanted = list(asked.stores)
    have = set(glance.csv_list(found.get("stores")))
    return [s for s in wanted if s not in have]


def preview(catalog: Catalog, connect: Connect, shard: Shard | None = None, rotate: bool = True,
            limits: retry.RetryLimits = retry.DEFAULT_LIMITS) -> tuple[list[Action], list[str]]:
    """The plan of a sync (or of one shard), with what could not be looked at; changes nothing.

    An image the sync would sign anew (another key or certificate, no upload) is "resign",
    not "unchanged": what sync's re-signing decides, asked of the key manager read-only."""
    work = scope(catalog, shard, rotate=rotate)
    signers = signers_of(work.todo)  # a key that cannot sign stops the preview as it stops the run
    seen = survey(work, connect, Checksums(limits), catalog.placement)
    actions = plan(work.todo, seen, rotate=work.images if work.rotate else [])
    return [_resign(a, signers.get(a.image), seen) if a.action == "unchanged" else a for a in actions], seen.failures


def _resign(action: Action, signer: Signer | None, seen: Survey) -> Action:
    if signer is None:
        return action
    listed = seen.listed(action)
    try:
        resigns = signature.would_resign(seen.clouds[action.cloud], signer, listed)
    except ImgpipeError as exc:  # as the run reports it
        seen.failures.append(f"sign {action.name} on {action.cloud}: {exc}")
        return replace(action, action="failed", error=str(exc))
    return replace(action, action="resign") if resigns else action
