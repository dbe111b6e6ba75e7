"""Filling a created image: PUT, or Glance's interoperable import (stage + import + wait).

Import exists because clouds forbid direct PUT by policy, because only import can write
into several stores at once, and because web-download lets Glance fetch a URL itself. The
bytes imgpipe sends are always the single-pass hashed body of a PUT (HashingBody), so the
verification after an import is the same as after a PUT. Failures raise; the caller
(upload._attempt) deletes the image, as it does for a failed PUT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgpipe import retry
from imgpipe.cloud import discovery, glance
from imgpipe.cloud.clouds import Cloud
from imgpipe.cloud.import_method import ImportMethod, Placement
from imgpipe.errors import GlanceRefusedError, ImgpipeError, ImportFailedError
from imgpipe.hashing import Digests, HashingBody

LOG = logging.getLogger("imgpipe.cloud.image_import")
POLL = 0.5
# An import (or a copy into another store) that has not ended after this long is failed.
IMPORT_WAIT = 30 * 60.0
# Disk formats a conversion plugin makes useless: vCenter needs the vmdk it was given.
MUST_NOT_CONVERT = frozenset({"vmdk"})
RUNNING = frozenset({"pending", "processing"})


@dataclass(frozen=True, kw_only=True)
class Payload:
    """What filling an image needs of an upload: the bytes, their format, and where they go."""

    path: Path
    name: str
    disk_format: str
    placement: Placement
    source_url: str | None = None  # for web-download: Glance fetches this; path is our copy
    # Digests of path from an earlier read (signing's); Glance's signature check ties them to the bytes sent.
    known: dict[str, str] = field(default_factory=dict)
    # Runs before the last bytes are sent (HashingBody.before_last).
    before_last: Callable[[], None] | None = None


@dataclass
class Targets:
    """Where the image must end up: [] = Glance's default store."""

    stores: list[str]
    all_stores: bool = False
    must_succeed: bool = True

    def import_fields(self) -> dict[str, Any]:
        if self.all_stores:
            return {"all_stores": True, "all_stores_must_succeed": self.must_succeed}
        if self.stores:
            return {"stores": self.stores, "all_stores_must_succeed": self.must_succeed}
        return {}


def targets(cloud: Cloud, asked: Placement) -> Targets:
    wanted = discovery.wanted_stores(cloud, list(asked.stores), asked.all_stores) \
        if (asked.stores or asked.all_stores) else []
    return Targets(wanted, asked.all_stores, not asked.allow_partial_stores)


def choose(cloud: Cloud, req: Payload, where: Targets) -> ImportMethod:
    """auto: PUT unless stores are asked for or the cloud refused a PUT; import otherwise."""
    method = req.placement.method
    if method == ImportMethod.auto:
        if req.source_url:
            method = ImportMethod.web_download
        elif where.stores or cloud.put_forbidden:
            method = ImportMethod.glance_direct
        else:
            return ImportMethod.put
    if method == ImportMethod.put:
        if len(where.stores) > 1 or where.all_stores:
            raise GlanceRefusedError(f"cloud {cloud.name}: {req.name}: a PUT writes into one store; "
                                     "use --import-method auto or glance-direct for several")
        return method
    if method == ImportMethod.web_download and not req.source_url:
        raise GlanceRefusedError(f"cloud {cloud.name}: {req.name}: web-download needs the source's URL")
    offered = discovery.import_methods(cloud)
    if method.value not in offered:
        raise GlanceRefusedError(f"cloud {cloud.name}: Glance does not offer the {method.value} import "
                                 f"(it offers: {', '.join(offered) or 'none'})")
    return method


def fill(cloud: Cloud, image_id: str, req: Payload, on_bytes: Callable[[int], None] | None) -> Digests:
    """Put the bytes into the image by the chosen method; return the digests of what was sent."""
    where = targets(cloud, req.placement)
    method = choose(cloud, req, where)
    body = HashingBody(req.path, on_bytes, req.known, before_last=req.before_last)
    if method == ImportMethod.put:
        if glance.put_data(cloud, image_id, body, req.disk_format, where.stores[0] if where.stores else None,
                           forbidden_ok=req.placement.method == ImportMethod.auto):
            assert body.digests is not None
            return body.digests
        # PUT forbidden by policy: remember it for this run, and stage instead.
        cloud.put_forbidden = True
        LOG.warning("cloud %s: direct upload forbidden (HTTP 403); using glance-direct import", cloud.name)
        method = choose(cloud, req, where)
        body = HashingBody(req.path, on_bytes, req.known, before_last=req.before_last)
    if method == ImportMethod.glance_direct:
        glance.stage_data(cloud, image_id, body)
        start(cloud, image_id, {"name": "glance-direct"}, where)
    else:
        start(cloud, image_id, {"name": "web-download", "uri": req.source_url}, where)
        for _ in body:  # the digests of the local copy, to compare with what Glance fetched
            pass
    wait(cloud, image_id, where)
    assert body.digests is not None
    return body.digests


def start(cloud: Cloud, image_id: str, method: dict[str, Any], where: Targets) -> None:
    """POST the import; a 409 on a retry means the first POST got through."""
    what = f"{method['name']} import of image {image_id}"
    payload = {"method": method, **where.import_fields()}
    explain = {403: copy_forbidden(image_id, where.stores)} if method["name"] == "copy-image" else None
    first = True

    def post() -> None:
        nonlocal first
        try:
            glance.request(cloud, "POST", f"/v2/images/{image_id}/import", what, ok=(202,), json=payload,
                           explain=explain)
        except glance.Conflict:
            if first:
                raise
        finally:
            first = False

    try:
        cloud.call(what, post, give_up=ImportFailedError)
    except GlanceRefusedError as exc:
        raise ImportFailedError(str(exc)) from exc


def copy_forbidden(image_id: str, stores: list[str]) -> str:
    """Glance's bare 403 on copy-image, explained: its copy_image policy is admin-only by default."""
    return (f"Glance lets only admins copy images by default (policy copy_image); ask a cloud admin to run "
            f"`glance image-import {image_id} --import-method copy-image --stores {','.join(stores)}`, "
            "or rerun with --force to upload a new image into those stores")


def wait(cloud: Cloud, image_id: str, where: Targets, timeout: float = IMPORT_WAIT) -> dict[str, Any]:
    """Poll until the image is active in every wanted store; log each change of progress."""
    deadline = time.monotonic() + timeout
    last: tuple[Any, ...] | None = None
    while True:
        image = cloud.call(f"get image {image_id}", lambda: glance.get_image(cloud, image_id))
        if image is None:
            raise ImportFailedError(f"cloud {cloud.name}: image {image_id} vanished during its import")
        importing = glance.csv_list(image.get("os_glance_importing_to_stores"))
        failed = glance.csv_list(image.get("os_glance_failed_import"))
        state = (image["status"], importing, failed, glance.csv_list(image.get("stores")))
        if state != last:
            LOG.info("cloud %s: image %s %s; importing to %s; in stores %s; failed %s", cloud.name,
                     image_id, state[0], ",".join(importing) or "-", ",".join(state[3]) or "-",
                     ",".join(failed) or "-")
            last = state
        if failed and (where.must_succeed or not (importing or state[3])):
            raise ImportFailedError(f"cloud {cloud.name}: image {image_id}: import into store(s) "
                                        f"{', '.join(failed)} failed{_task_message(cloud, image_id)}")
        if image["status"] == glance.ACTIVE and not importing and _task(cloud, image_id)[0] not in RUNNING:
            return image
        if image["status"] not in glance.IN_PROGRESS and image["status"] != glance.ACTIVE:
            raise ImportFailedError(f"cloud {cloud.name}: image {image_id} ended {image['status']} "
                                    f"during its import{_task_message(cloud, image_id)}")
        if image["status"] == "queued" and not importing:
            message = _task_message(cloud, image_id, failed_only=True)
            if message:
                raise ImportFailedError(f"cloud {cloud.name}: image {image_id}: import failed{message}")
        if time.monotonic() > deadline:
            raise ImportFailedError(f"cloud {cloud.name}: image {image_id}: import did not end "
                                    f"within {timeout:.0f} s ({image['status']})")
        time.sleep(POLL)


def complete_stores(cloud: Cloud, image: dict[str, Any], stores: list[str],
                    must_succeed: bool) -> dict[str, Any] | None:
    """Copy an existing active image (as listed) into the wanted stores it misses, with copy-image.

    Returns the image after the copy, or None when nothing was copied: the listing already
    showed every wanted store (no request at all), the image is gone, or, with must_succeed
    False, every copy failed. The image itself is never deleted here: it is a good image in
    the stores it has.
    """
    if all(s in glance.csv_list(image.get("stores")) for s in stores):
        return None
    current = cloud.call(f"get image {image['id']}", lambda: glance.get_image(cloud, image["id"]))
    have = glance.csv_list(current.get("stores")) if current else []
    missing = [s for s in stores if s not in have]
    if current is None or not missing:
        return None
    if "copy-image" not in discovery.import_methods(cloud):
        raise GlanceRefusedError(f"cloud {cloud.name}: image {image['id']} misses store(s) "
                                 f"{', '.join(missing)} and Glance does not offer copy-image")
    LOG.info("cloud %s: copying image %s into %s", cloud.name, image["id"], ", ".join(missing))
    copy = Targets(missing, False, must_succeed)
    start(cloud, image["id"], {"name": "copy-image"}, copy)
    after = wait(cloud, image["id"], copy)
    if not any(s in glance.csv_list(after.get("stores")) for s in missing):
        LOG.warning("cloud %s: image %s could not be copied into %s", cloud.name, image["id"], ", ".join(missing))
        return None
    return after


def converted(cloud: Cloud, image: dict[str, Any], req: Payload) -> bool:
    """Whether Glance rewrote the image on import (the image_conversion plugin).

    For a vmdk that is an error (vCenter cannot use the raw or qcow2 it becomes): raised,
    so the caller deletes the image. Other formats stay usable by their hypervisor; the
    image is kept with a warning, and its hashes are Glance's, not those of the bytes sent.
    """
    if image.get("disk_format") == req.disk_format:
        return False
    change = f"{req.disk_format} -> {image.get('disk_format')}"
    if req.disk_format in MUST_NOT_CONVERT:
        raise ImportFailedError(f"cloud {cloud.name}: {req.name}: Glance converted the image on import "
                                f"({change}, image_conversion plugin); deleted, since vCenter needs the "
                                "vmdk; use --import-method put")
    LOG.warning("cloud %s: %s: Glance converted the image on import (%s, image_conversion plugin); "
                "kept, but its hashes are of Glance's conversion", cloud.name, req.name, change)
    return True


def _task(cloud: Cloud, image_id: str) -> tuple[str, str]:
    """(status, message) of the image's newest import task; ("", "") if Glance shows none.

    The task is Glance's only account of why an import failed, and it is still writing to
    the database for a moment after the image turned active.
    """
    try:
        resp = glance.request(cloud, "GET", f"/v2/images/{image_id}/tasks", f"tasks of image {image_id}",
                              ok=(200, 404))
    except (ImgpipeError, retry.Transient) as exc:  # an extra: the image's state decides
        LOG.debug("cloud %s: cannot read tasks of %s: %s", cloud.name, image_id, exc)
        return "", ""
    tasks = resp.json().get("tasks", []) if resp.status_code == 200 else []
    if not tasks:
        return "", ""
    newest = max(tasks, key=lambda t: t.get("created_at", ""))
    return str(newest.get("status") or ""), " ".join(str(newest.get("message") or "").split())[:300]


def _task_message(cloud: Cloud, image_id: str, failed_only: bool = False) -> str:
    status, message = _task(cloud, image_id)
    if not message or (failed_only and status != "failure"):
        return ""
    return f": {message}"
