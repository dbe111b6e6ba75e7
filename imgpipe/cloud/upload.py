"""The story of one upload: find, create, stream, verify, label, or clean up.

Idempotency anchor: an active image with the same name, profile and source sha256 is the
result of an earlier run, so nothing is uploaded. The unit that is retried is a whole fresh
image (create -> PUT -> verify): Glance cannot take a second PUT into an image whose first
PUT failed, and an image left in 'saving' by a crashed server never recovers.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpipe import __version__, timing
from imgpipe.cloud import glance, image_import
from imgpipe.cloud.clouds import Cloud
from imgpipe.cloud.import_method import Placement
from imgpipe.errors import GlanceRefusedError, ImgpipeError, UploadError
from imgpipe.hashing import Digests, digest_file, sha256_file
from imgpipe.owner import Owner, me
from imgpipe.profiles import RESERVED

if TYPE_CHECKING:  # signing loads cryptography (~0.2 s): only a signed upload imports it
    from imgpipe.signing import Signer

LOG = logging.getLogger("imgpipe.cloud.upload")
GIB = 1 << 30
PROFILE_KEY = "imgpipe_profile"
SOURCE_KEY = "imgpipe_source_sha256"
VERSION_KEY = "imgpipe_version"
RUN_KEY = "imgpipe_run"
HEARTBEAT_KEY = "imgpipe_heartbeat"
# host:pid:start time of the run uploading an image: on the same host a dead owner is
# recognised at once instead of after STALE_AFTER (see imgpipe.owner).
OWNER_KEY = "imgpipe_owner"
# A run uploading an image touches it this often (Glance's updated_at does not move during a
# PUT, but does with each PATCH); an in-progress image whose updated_at is STALE_AFTER behind
# Glance's own clock is a crashed run's leftover. Both times are Glance's: two hosts' clocks
# need not agree. HEARTBEAT_KEY (this host's time) is still written for older versions.
HEARTBEAT = 30.0
STALE_AFTER = 4 * HEARTBEAT
WAIT_FOR_PEER = 15 * 60
PEER_POLL = 1.0
MAX_SLOTS = 64
ID_NAMESPACE = uuid.UUID("5b8f3c2e-6f0e-4d8a-9a57-3b1f0c6a7e21")


@dataclass(kw_only=True)
class UploadRequest:
    path: Path
    name: str
    profile: str
    disk_format: str
    container_format: str
    virtual_size: int
    # None: the file is its own source, so the anchor is the sha256 of the bytes sent; a
    # pre-pass computes it only when it is needed before the upload (lookup, image ids).
    source_sha256: str | None
    properties: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    visibility: str | None = "private"
    force: bool = False
    placement: Placement = field(default_factory=Placement)
    source_url: str | None = None  # for web-download: Glance fetches this; path is our copy
    signer: Signer | None = None  # sign the bytes: Glance verifies them as they arrive
    known_digests: dict[str, str] = field(default_factory=dict)  # of path, from the signing read

    def payload(self, before_last: Callable[[], None] | None = None) -> image_import.Payload:
        return image_import.Payload(path=self.path, name=self.name, disk_format=self.disk_format,
                                    placement=self.placement, source_url=self.source_url, known=self.known_digests,
                                    before_last=before_last)


def anchor(name: str, profile: str, source_sha256: str) -> dict[str, str]:
    """What makes two publishes 'the same': openstacksdk-style, keyed on content, not name alone."""
    return {"name": name, PROFILE_KEY: profile, SOURCE_KEY: source_sha256}


@dataclass
class UploadResult:
    cloud: str
    name: str
    profile: str
    image_id: str
    status: str  # "created", "unchanged", "copied" (completed into missing stores) or "resigned"
    disk_format: str
    container_format: str
    size: int
    seconds: float = 0.0
    checksum: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    took_over_from: list[str] = field(default_factory=list)  # dead owners whose leftovers went
    stores: list[str] = field(default_factory=list)
    # "NAME (ID)" of images a failed attempt left that Glance would not delete, even at the end
    left_behind: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Cancelled(Exception):
    """The run is being interrupted: the upload stops at its next chunk and deletes its image."""


def upload(cloud: Cloud, req: UploadRequest, on_bytes: Callable[[int], None] | None = None,
           cancel: threading.Event | None = None) -> UploadResult:
    """Publish one file; `cancel` set (Ctrl-C, SIGTERM) stops it within a chunk.

    What a failed attempt leaves and Glance will not delete at once is deleted again (with
    backoff) when the upload ends, and named in the result or the error if it still stands.
    """
    started = time.monotonic()
    own_sha = None
    if req.signer is not None:  # before anything is created: a refused certificate leaves nothing
        from imgpipe.cloud import signature

        with timing.span("sign"):
            props, digest = signature.for_file(cloud, req.signer, req.path)
        own_sha = digest.sha256  # the send then hashes only sha512, which Glance reports back
        req = replace(req, properties={**req.properties, **props}, known_digests={"sha256": own_sha})
    if not req.force:
        # the lookup and the image ids need it now (a signed file's was read with its digest)
        sha = req.source_sha256 or own_sha or sha256_file(req.path)
        req = replace(req, source_sha256=sha)
        with timing.span("look-ups"):
            existing = find_unchanged(cloud, req.name, req.profile, sha, req.placement, req.signer)
        if existing:
            _sweep_after(cloud, req, [])
            return existing
    run_id = uuid.uuid4().hex
    took_over: list[str] = []
    sent = _watched(on_bytes, cancel, req.name)
    # What earlier runs left is swept while this one sends its bytes (not beside the create, which
    # it would slow): neither delaying nor failing the upload. This run's own image is fresh and
    # its owner alive: never taken for a leftover. A failed or stopped upload sweeps nothing
    # it has not begun to (nor waits for a sweep under way: an interrupt must end quickly).
    claimed, failed = threading.Event(), threading.Event()
    sweep = threading.Thread(target=_sweep_after, args=(cloud, req, took_over, claimed, failed),
                             name=f"sweep-{req.name}", daemon=True)
    sweep.start()
    ok = False
    try:
        image, status = cloud.call(f"publish {req.name}",
                                   lambda: _attempt(cloud, req, run_id, sent, took_over, claimed.set))
        ok = True
    except ImgpipeError as exc:
        standing = delete_unfinished(cloud, run_id)
        if not standing:
            raise
        named = copy.copy(exc)  # same class (exit code) and fields, the leftovers named
        named.args = (f"{exc}; left behind in Glance: {', '.join(standing)}",)
        raise named from exc
    finally:
        if not ok:
            failed.set()
        claimed.set()
    sweep.join()
    result = _result(cloud, req.profile, image, status, started)
    result.left_behind = delete_unfinished(cloud, run_id)
    result.took_over_from = list(dict.fromkeys(took_over))  # the sweep and a claim may both meet one
    return result


def _sweep_after(cloud: Cloud, req: UploadRequest, took_over: list[str], start: threading.Event | None = None,
                 skip: threading.Event | None = None) -> None:
    """What earlier runs left, once `start` is set (not at all if `skip` is set by then); a
    failure is a warning (the sweep must not fail the upload)."""
    if start is not None:
        start.wait()
    if skip is not None and skip.is_set():
        return
    try:
        with timing.span("look-ups"):
            sweep_abandoned(cloud, req.name, req.profile, took_over)
    except ImgpipeError as exc:
        LOG.warning("cloud %s: could not look for images earlier runs left: %s", cloud.name, exc)


def _watched(on_bytes: Callable[[int], None] | None, cancel: threading.Event | None,
             name: str) -> Callable[[int], None] | None:
    """on_bytes, raising Cancelled once `cancel` is set (the body iterator calls it per chunk)."""
    if cancel is None:
        return on_bytes

    def sent(count: int) -> None:
        if cancel.is_set():
            raise Cancelled(f"{name}: upload cancelled")
        if on_bytes is not None:
            on_bytes(count)

    return sent


def delete_unfinished(cloud: Cloud, run_id: str | None = None) -> list[str]:
    """Delete (with backoff) the images this run created and did not finish; "NAME (ID)" of
    those Glance still keeps. run_id: only one upload's (None: all, for an interrupted run)."""
    standing = []
    for image_id, name in cloud.unfinished(run_id).items():
        if not _delete(cloud, image_id):
            LOG.error("cloud %s: image %s (%s) is left behind: delete it with "
                      "'openstack image delete %s'", cloud.name, name, image_id, image_id)
            standing.append(f"{name} ({image_id})")
    return standing


def sweep_abandoned(cloud: Cloud, name: str, profile: str, took_over: list[str] | None = None) -> list[str]:
    """Delete the unfinished images earlier runs left under this name and profile (found by
    the provenance properties every imgpipe image carries); return their ids.

    An image is abandoned when Glance killed it, when its owner died on this host, or when
    Glance has not seen it touched for STALE_AFTER; a live peer's upload is left alone.
    """
    images, now = cloud.call("list images", lambda: glance.list_images_at(cloud, {"name": name, PROFILE_KEY: profile}))
    gone = []
    for image in images:
        if image.get("name") != name or image.get(PROFILE_KEY) != profile:
            continue
        why = _abandoned(image, now)
        if why is None:
            continue
        LOG.warning("cloud %s: deleting image %s (%s), left by an earlier run: %s", cloud.name, image["id"],
                    image.get("status"), why)
        dead = Owner.parse(str(image.get(OWNER_KEY, "")))
        if _delete(cloud, image["id"]):
            gone.append(image["id"])
            if took_over is not None and dead is not None and dead.is_dead_here():
                took_over.append(str(dead))
    return gone


def _abandoned(image: dict[str, Any], now: float) -> str | None:
    """Why an unfinished image is no live upload's (None: it may be one). `now` is Glance's clock."""
    if image.get("status") == glance.KILLED:
        return "Glance killed its upload"
    if image.get("status") not in glance.IN_PROGRESS:
        return None
    dead = Owner.parse(str(image.get(OWNER_KEY, "")))
    if dead is not None and dead.is_dead_here():
        return f"its owner {dead} died"
    silent = now - glance.timestamp(image.get("updated_at"))
    if silent > STALE_AFTER:
        return f"Glance has not seen it touched for {silent:.0f} s"
    return None


def find_unchanged(cloud: Cloud, name: str, profile: str, source_sha256: str,
                   placement: Placement | None = None, signer: Signer | None = None) -> UploadResult | None:
    """The active image an earlier run published from this same source, if any; completed with
    copy-image into the stores of `placement` it misses (status "copied"), never uploaded again;
    with a signer, signed by it (status "resigned") if another key or none signed it.

    Hidden images count (a rollback to an older, hidden version must not upload a copy);
    Glance lists them only when asked for them alone.
    """
    started = time.monotonic()
    wanted = anchor(name, profile, source_sha256)
    found = _find(cloud, wanted, {glance.ACTIVE}) or _find(cloud, wanted, {glance.ACTIVE}, hidden=True)
    if not found:
        return None
    where = image_import.targets(cloud, placement or Placement())
    copied = image_import.complete_stores(cloud, found[0], where.stores, where.must_succeed)
    resigned = None
    if signer is not None:
        from imgpipe.cloud import signature

        resigned = signature.resign(cloud, signer, copied or found[0])
    status = "resigned" if resigned else "copied" if copied else "unchanged"
    return _result(cloud, profile, resigned or copied or found[0], status, started)


def _result(cloud: Cloud, profile: str, image: dict[str, Any], status: str,
            started: float) -> UploadResult:
    props = {k: str(v) for k, v in image.items() if k not in RESERVED}
    return UploadResult(cloud.name, image["name"], profile, image["id"], status, image["disk_format"],
                        image["container_format"], int(image.get("size") or 0),
                        time.monotonic() - started, image.get("checksum") or "", props,
                        stores=glance.csv_list(image.get("stores")))


def _find(cloud: Cloud, wanted: dict[str, str], statuses: set[str], hidden: bool = False) -> list[dict[str, Any]]:
    """Images with this anchor (hidden ones only, with hidden=True), oldest first."""
    filters = {**wanted, "os_hidden": "true"} if hidden else wanted
    images = cloud.call("list images", lambda: glance.list_images(cloud, filters))
    found = [i for i in images
             if all(i.get(k) == v for k, v in wanted.items()) and i.get("status") in statuses]
    return sorted(found, key=lambda i: (i.get("created_at", ""), i["id"]))


def _attempt(cloud: Cloud, req: UploadRequest, run_id: str, on_bytes: Callable[[int], None] | None,
             took_over: list[str], on_claimed: Callable[[], None]) -> tuple[dict[str, Any], str]:
    """Claim a fresh image and fill it; whatever fails, that image is deleted before leaving."""
    with timing.span("create"):
        image, peer = _claim(cloud, req, run_id, took_over)
    on_claimed()
    if peer is not None:
        return peer, "unchanged"
    assert image is not None
    cloud.created(image["id"], req.name, run_id)
    done = False
    try:
        with _heartbeat(cloud, image) as quiet, timing.span("data"):
            digests = image_import.fill(cloud, image["id"], req.payload(before_last=quiet), on_bytes)
        with timing.span("verify"):  # before the labels that vouch for the bytes go on
            now = cloud.call(f"get image {image['id']}", lambda: glance.get_image(cloud, image["id"]))
            digests = _verify(cloud, now or {"status": "deleted"}, digests, req)
            verified = glance.update_properties(cloud, now or image, _labels(req, digests))
        done = True
        cloud.settled(image["id"])
        return verified, "created"
    finally:
        if not done:
            _delete(cloud, image["id"])


def _labels(req: UploadRequest, digests: Digests) -> dict[str, str]:
    """What openstacksdk records about the bytes, and the anchor when it came from the send."""
    labels = {
        "owner_specified.openstack.md5": digests.md5,
        "owner_specified.openstack.sha256": digests.sha256,
        "owner_specified.openstack.object": f"images/{req.name}",
    }
    if req.source_sha256 is None:
        labels[SOURCE_KEY] = digests.sha256
    return labels


def _slot_id(req: UploadRequest, slot: int) -> str:
    """Every run publishing the same thing tries the same image ids in the same order.

    Glance refuses a second image with an existing (or deleted) id with 409, which makes
    create-with-id the compare-and-swap that concurrent publishers otherwise lack.
    """
    assert req.source_sha256 is not None  # upload() fills it in for every run that is not forced
    key = "|".join([req.name, req.profile, req.source_sha256, str(slot)])
    return str(uuid.uuid5(ID_NAMESPACE, key))


def _claim(cloud: Cloud, req: UploadRequest, run_id: str,
           took_over: list[str]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Return (our new image, None), or (None, a peer's active image with the same content)."""
    fields = _fields(req, run_id)
    for slot in range(MAX_SLOTS):
        image_id = str(uuid.uuid4()) if req.force else _slot_id(req, slot)
        try:
            return glance.create_image(cloud, {**fields, "id": image_id}), None
        except glance.Conflict:
            peer = _settle_peer(cloud, image_id, run_id, took_over)
            if peer is not None:
                return None, peer
    raise UploadError(f"cloud {cloud.name}: {req.name}: {MAX_SLOTS} image ids for this content "
                      "are used up by deleted images; run 'glance-manage db purge' or use --force")


def _settle_peer(cloud: Cloud, image_id: str, run_id: str, took_over: list[str]) -> dict[str, Any] | None:
    """The id is taken: wait for a live peer's upload, or clear the way to the next id.

    A peer is gone when it is this run, its owner died on this host, or Glance has not seen it
    touched for STALE_AFTER (by Glance's clock: no two hosts' clocks are compared).
    """
    deadline = time.monotonic() + WAIT_FOR_PEER
    while True:
        peer, now = cloud.call(f"get image {image_id}", lambda: glance.get_image_at(cloud, image_id))
        if peer is None or peer["status"] not in {glance.ACTIVE, *glance.IN_PROGRESS}:
            return None  # deleted or failed: that id is spent
        if peer["status"] == glance.ACTIVE:
            return peer
        dead = Owner.parse(str(peer.get(OWNER_KEY, "")))
        if dead is not None and dead.is_dead_here():
            LOG.warning("cloud %s: taking over image id %s from dead owner %s", cloud.name, image_id, dead)
            took_over.append(str(dead))
            _delete(cloud, image_id)
            return None
        why = "an earlier attempt of this run" if peer.get(RUN_KEY) == run_id else _abandoned(peer, now)
        if why is not None:
            LOG.warning("cloud %s: deleting leftover image %s (%s since %s): %s", cloud.name,
                        image_id, peer["status"], peer.get("updated_at"), why)
            _delete(cloud, image_id)
            return None
        if time.monotonic() > deadline:
            raise UploadError(f"cloud {cloud.name}: concurrent upload {image_id} did not finish in time")
        time.sleep(PEER_POLL)


def _fields(req: UploadRequest, run_id: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        **req.properties,
        "name": req.name,
        "disk_format": req.disk_format,
        "container_format": req.container_format,
        "min_disk": max(1, math.ceil(req.virtual_size / GIB)),
        "tags": req.tags,
        PROFILE_KEY: req.profile,
        VERSION_KEY: __version__,
        RUN_KEY: run_id,
        HEARTBEAT_KEY: f"{time.time():.0f}",
        OWNER_KEY: str(me()),
    }
    if req.source_sha256 is not None:
        fields[SOURCE_KEY] = req.source_sha256
    if req.visibility:
        fields["visibility"] = req.visibility
    return fields


@contextmanager
def _heartbeat(cloud: Cloud, image: dict[str, Any]) -> Iterator[Callable[[], None]]:
    """Show concurrent runs that this upload is alive while the PUT runs.

    Glance's PATCH writes back the whole image it read, status and hashes included: a beat read
    before the upload's last save and written after it would put 'saving' back over 'active'.
    So the beats end, one in flight finished, before the last bytes leave (the quiet it yields).
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            try:
                glance.update_properties(cloud, image, {HEARTBEAT_KEY: f"{time.time():.0f}"})
            except Exception as exc:  # a missed beat only shortens a peer's patience
                LOG.debug("cloud %s: heartbeat of %s failed: %s", cloud.name, image["id"], exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{image['id']}", daemon=True)
    thread.start()

    def quiet() -> None:
        stop.set()
        thread.join()

    try:
        yield quiet
    finally:
        quiet()


def _verify(cloud: Cloud, image: dict[str, Any], ours: Digests, req: UploadRequest) -> Digests:
    """Glance's size and hashes (as it reports them after the upload) must equal the ones
    computed while the bytes left; returns ours with md5 filled in.

    The send hashes what Glance reports as os_hash_value (sha512 by default); once that is
    equal, the bytes are, and Glance's md5 is ours. A Glance reporting another algorithm (or
    none) costs one more read of the file, for md5 and that algorithm.
    """
    problems = []
    if image.get("status") != glance.ACTIVE:
        problems.append(f"status {image.get('status')}")
    if not problems and image_import.converted(cloud, image, req.payload()):
        # Glance's conversion holds other bytes than the ones sent: md5 of ours from the file
        return ours if ours.md5 else replace(ours, md5=digest_file(req.path, ("md5",))["md5"])
    if int(image.get("size") or -1) != ours.size:
        problems.append(f"size {image.get('size')} != {ours.size}")
    algo = image.get("os_hash_algo")
    mine = ours.get(algo) if algo else None
    if not problems and (mine is None or not (ours.md5 or image.get("checksum"))):
        wanted = tuple(a for a in ("md5", algo) if a and a in hashlib.algorithms_available)
        read = digest_file(req.path, wanted)
        ours, mine = replace(ours, md5=read["md5"]), read.get(str(algo))
    if algo and mine is not None and image.get("os_hash_value") != mine:
        problems.append(f"{algo} differs")
    if image.get("checksum") and ours.md5 and image["checksum"] != ours.md5:
        problems.append("md5 checksum differs")
    if problems:
        raise UploadError(f"cloud {cloud.name}: {req.name} failed verification: {', '.join(problems)}")
    return ours if ours.md5 else replace(ours, md5=image["checksum"])


def _delete(cloud: Cloud, image_id: str) -> bool:
    """With retries and backoff (a 5xx, a server restarting after a crash); True when the image
    is gone. Never raises: clean-up must not hide the error that caused it.

    A delete answered with a 5xx may still have happened; Glance then refuses the retry
    (400 "deleted to deleted"), so a refusal is checked against the image's actual state.
    """
    try:
        try:
            cloud.call(f"delete image {image_id}", lambda: glance.delete_image(cloud, image_id))
        except GlanceRefusedError:
            if cloud.call(f"get image {image_id}", lambda: glance.get_image(cloud, image_id)) is not None:
                raise
    except Exception as exc:
        LOG.error("cloud %s: could not delete image %s: %s", cloud.name, image_id, exc)
        return False
    cloud.settled(image_id)
    return True
