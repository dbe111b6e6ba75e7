"""Retention: which images of a catalog image stay visible, get hidden (os_hidden) or expire.

Only images imgpipe published for this catalog image are candidates: they carry the
provenance properties (profile, source sha256, catalog image and version) and the name the
catalog gives that version. Anything else, even with the same name, is never touched.
Versions are ordered by the catalog (last listed = newest). Names never change: an old version
keeps its name and is hidden, so a rerun still recognises it and boots by id keep working.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from imgpipe.catalog.model import IMAGE_KEY, VERSION_KEY, Image
from imgpipe.cloud import glance
from imgpipe.cloud.clouds import Cloud
from imgpipe.cloud.upload import PROFILE_KEY, SOURCE_KEY
from imgpipe.errors import ImgpipeError

DEACTIVATED = "deactivated"
# Show the versions to keep before hiding the ones they replace: never a moment with none.
ORDER = {"discard": 0, "unhide": 1, "hide": 2, "deactivate": 3, "delete": 4}
PLANNED = "9999"  # created_at of an image a sync is about to create: newer than any


@dataclass
class Action:
    """One line of a plan: create, unchanged, copy (into missing stores), resign (another key or certificate: new
    signature properties, no upload), discard (an interrupted run's upload), unhide, hide, deactivate or delete."""

    cloud: str
    image: str
    profile: str
    name: str
    version: str
    action: str
    image_id: str = ""
    error: str = ""
    stores: list[str] = field(default_factory=list)  # a copy's missing stores

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def owned(cloud: Cloud, images: list[Image]) -> dict[str, list[dict[str, Any]]]:
    """Each catalog image's images on one cloud, hidden ones included (Glance omits them unless
    asked), and in-progress ones: under the cloud lock those are leftovers of a run that died.

    Glance filters custom properties on one exact value only, so the cloud is listed once per
    profile (twice: visible, hidden) and the images are told apart here: the cost of a look
    does not grow with the number of catalog images.
    """
    found: dict[str, dict[str, Any]] = {}
    for profile in sorted({p for image in images for p in image.profiles}):
        for extra in ({}, {"os_hidden": "true"}):
            listed = cloud.call(f"list images of profile {profile}",
                                functools.partial(glance.list_images, cloud, {PROFILE_KEY: profile, **extra}))
            found.update((i["id"], i) for i in listed)
    return {image.name: [i for i in found.values() if _is_ours(i, image)] for image in images}


def _is_ours(found: dict[str, Any], image: Image) -> bool:
    profile, label = found.get(PROFILE_KEY), found.get(VERSION_KEY)
    return (bool(found.get(SOURCE_KEY)) and profile in image.profiles and isinstance(label, str)
            and found.get(IMAGE_KEY) == image.name and found.get("name") == image.image_name(profile, label)
            and found.get("status") in (glance.ACTIVE, DEACTIVATED, *glance.IN_PROGRESS))


def planned(image: Image, profile: str, version: str, sha256: str) -> dict[str, Any]:
    """Stands in for an image a sync will create, so a plan ranks it like the real one."""
    return {"id": "", "name": image.image_name(profile, version), "status": glance.ACTIVE, "os_hidden": False,
            "created_at": PLANNED, PROFILE_KEY: profile, SOURCE_KEY: sha256, VERSION_KEY: version}


def retention(cloud: str, image: Image, profile: str, group: list[dict[str, Any]],
              shas: dict[str, str]) -> list[Action]:
    """What to change so the newest `keep` are visible, the next ones hidden, the rest expired.

    A deactivated image is never reactivated: someone (or an earlier expiry) retired it, and
    a version still wanted gets a fresh upload instead.
    """
    rank = _rank(image, shas)
    finished = [i for i in group if i["status"] in (glance.ACTIVE, DEACTIVATED)]
    ordered = sorted(finished, key=lambda i: (rank(i), i.get("created_at", ""), i["id"]), reverse=True)
    policy = image.retention
    actions = []
    for position, found in enumerate(ordered):
        if not found["id"]:
            continue  # planned: it will be created visible and active
        hidden, active = bool(found.get("os_hidden")), found["status"] == glance.ACTIVE
        if position < policy.keep:
            change = "unhide" if hidden and active else None
        elif policy.expire_after is None or position < policy.expire_after:
            change = None if hidden else "hide"
        elif policy.expire == "delete":
            change = "delete"
        else:
            change = "deactivate" if active else None if hidden else "hide"
        if change:
            actions.append(Action(cloud, image.name, profile, found["name"], found[VERSION_KEY], change,
                                  found["id"]))
    return actions


def _rank(image: Image, shas: dict[str, str]) -> Callable[[dict[str, Any]], int]:
    """Catalog position of an image's version, -1 (oldest) if the catalog no longer lists it.

    Versions whose sha256 is known (the ones to publish) match on content, like publish's
    no-op check, so a rebuilt source under an old label counts as a different version; older
    versions match on the recorded label, so their checksum files need not be fetched.
    """
    by_sha = {shas[v.version]: i for i, v in enumerate(image.versions) if v.version in shas}
    by_label = {v.version: i for i, v in enumerate(image.versions) if v.version not in shas}
    return lambda found: by_sha.get(found[SOURCE_KEY], by_label.get(found[VERSION_KEY], -1))


def not_ready(image: Image, states: dict[str, list[dict[str, Any]]], shas: dict[str, str]) -> str | None:
    """Why this image must not rotate yet (None: the newest version is active everywhere)."""
    newest = image.versions[-1]
    if newest.version not in shas:
        return f"no checksum for its newest version {newest.version}"
    for cloud in image.clouds:
        if cloud not in states:
            return f"cloud {cloud} could not be reached"
        for profile in image.profiles:
            name = image.image_name(profile, newest.version)
            if not any(i["name"] == name and i[PROFILE_KEY] == profile and i[SOURCE_KEY] == shas[newest.version]
                       and i["status"] == glance.ACTIVE for i in states[cloud]):
                return f"newest version {newest.version} is not active on cloud {cloud} as {name}"
    return None


def apply(cloud: Cloud, actions: list[Action]) -> None:
    """Carry out the actions in a safe order; a failure is recorded on its action, the rest go on."""
    for action in sorted(actions, key=lambda a: ORDER[a.action]):
        try:
            cloud.call(f"{action.action} {action.name} ({action.image_id})", functools.partial(_do, cloud, action))
        except ImgpipeError as exc:
            action.error = str(exc)


def _do(cloud: Cloud, action: Action) -> None:
    if action.action in ("delete", "discard"):
        glance.delete_image(cloud, action.image_id)
        return
    glance.update_properties(cloud, {"id": action.image_id, "os_hidden": None},
                             {"os_hidden": action.action != "unhide"})
    if action.action == "deactivate":
        glance.image_action(cloud, action.image_id, "deactivate")
