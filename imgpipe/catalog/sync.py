"""`catalog sync` and `catalog rotate`: the story of one scheduled run.

Lock the clouds -> look (checksums, each cloud's images) -> plan -> per unit, `jobs` at a
time: download once, verify, publish what is missing to all its clouds at once -> look again
-> rotate every image whose newest version is active everywhere -> report.
A rerun after a crash redoes only what is missing: the plan finds finished uploads and
discards half-finished ones (under the cloud lock no live run can own them), a cut download
resumes from its .part file, and rotation waits until the uploads are complete.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgpipe import locks, settings
from imgpipe.catalog import download as sources
from imgpipe.catalog import rotation
from imgpipe.catalog.model import IMAGE_KEY, VERSION_KEY, Catalog, Image
from imgpipe.catalog.plan import Connect, Shard, Survey, Unit, look, plan, scope, signers_of, survey
from imgpipe.catalog.rotation import Action
from imgpipe.cloud import image_import, signature
from imgpipe.conversion.convert import Options
from imgpipe.errors import ImgpipeError
from imgpipe.pipeline.prepared import Preparation
from imgpipe.pipeline.publish import PublishRequest, publish
from imgpipe.profiles import Profile
from imgpipe.progress import Progress
from imgpipe.retry import DEFAULT_LIMITS, RetryLimits
from imgpipe.signing import Signer

DEFAULT_JOBS = settings.SYNC_JOBS
PRUNE_AFTER = 7 * 24 * 3600  # cached sources no catalog version uses, untouched this long


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgpipe"


@dataclass(kw_only=True)
class SyncOptions:
    cache_dir: Path
    profiles: dict[str, Profile]
    jobs: int = DEFAULT_JOBS
    shard: Shard | None = None
    rotate: bool = True
    limits: RetryLimits = DEFAULT_LIMITS
    convert: Options | None = None  # default: convert under cache_dir/work


@dataclass
class SyncReport:
    catalog: str
    shard: str | None = None
    images: list[Action] = field(default_factory=list)  # created / copied / resigned / unchanged / failed
    changes: list[Action] = field(default_factory=list)  # discard, unhide, hide, deactivate, delete
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    seconds: float = 0.0

    def counts(self) -> Counter[str]:
        return Counter(a.action for a in self.images)

    def changed(self) -> Counter[str]:
        return Counter(a.action for a in self.changes if not a.error)

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "catalog": self.catalog, "shard": self.shard, "seconds": round(self.seconds, 3),
            "summary": {"created": counts["created"], "copied": counts["copied"], "resigned": counts["resigned"],
                        "unchanged": counts["unchanged"],
                        "failed": counts["failed"], "uploaded_bytes": self.uploaded_bytes,
                        "changed": dict(self.changed()), "errors": len(self.failures)},
            "images": [a.to_dict() for a in self.images],
            "changes": [a.to_dict() for a in self.changes],
            "failures": self.failures, "notes": self.notes,
        }


def run(catalog: Catalog, path: Path, connect: Connect, opts: SyncOptions, *, publish_units: bool = True,
        progress: Progress | None = None) -> SyncReport:
    """Sync (publish_units=True) or only rotate; failures are collected in the report, not raised."""
    started = time.monotonic()
    report = SyncReport(str(path), str(opts.shard) if opts.shard else None)
    work = scope(catalog, opts.shard, publish=publish_units, rotate=opts.rotate)
    if opts.shard:
        report.notes.append(f"shard {opts.shard}: rotation is left to `imgpipe catalog rotate` after all shards")
    signers = signers_of(work.todo)  # a key or certificate that cannot sign stops the run before any call
    with locks.clouds(opts.cache_dir, [c for i in work.images for c in i.clouds], report.shard):
        seen = survey(work, connect, sources.Checksums(opts.limits), catalog.placement)
        for name, cloud in seen.clouds.items():  # the catalog's word on a cloud wins over its clouds.yaml
            cloud.metadata_paths = catalog.metadata_paths(name) or cloud.metadata_paths
        actions = plan(work.todo, seen, rotate=[])
        report.failures += seen.failures  # after plan(): it records clouds whose stores it cannot read
        report.images = [_resign(a, signers.get(a.image), seen, report) for a in actions if a.action == "unchanged"]
        images = {i.name: i for i in work.images}
        report.images += [_copy(a, images[a.image], seen, report) for a in actions if a.action == "copy"]
        _publish_all(work.todo, actions, seen, opts, report, progress, signers)
        if work.rotate:
            _rotate(work.images, seen, opts, report)
        sources.prune(opts.cache_dir, {s for by_version in seen.shas.values() for s in by_version.values()},
                      PRUNE_AFTER)
    report.seconds = time.monotonic() - started
    return report


def _copy(action: Action, image: Image, seen: Survey, report: SyncReport) -> Action:
    """Complete an identical image into the stores it misses (copy-image): no download, no upload.

    The same store completion upload and publish use: retried, honouring allow_partial_stores,
    and "copied" only when a store was added.
    """
    cloud = seen.clouds[action.cloud]
    listed = seen.listed(action)
    try:
        copied = image_import.complete_stores(cloud, listed, action.stores,
                                              not seen.placement(image, action.cloud).allow_partial_stores)
    except ImgpipeError as exc:
        report.failures.append(f"copy {action.name} to {', '.join(action.stores)}: {exc}")
        return replace(action, action="failed", error=str(exc))
    return replace(action, action="copied" if copied else "unchanged")


def _resign(action: Action, signer: Signer | None, seen: Survey, report: SyncReport) -> Action:
    """An image already published: signed by this run's key and certificate, without an upload
    (its signature properties replaced when another key or none signed it)."""
    if signer is None:
        return action
    listed = seen.listed(action)
    try:
        changed = signature.resign(seen.clouds[action.cloud], signer, listed)
    except ImgpipeError as exc:
        report.failures.append(f"sign {action.name} on {action.cloud}: {exc}")
        return replace(action, action="failed", error=str(exc))
    return replace(action, action="resigned") if changed else action


def _publish_all(todo: list[Unit], actions: list[Action], seen: Survey, opts: SyncOptions,
                 report: SyncReport, progress: Progress | None, signers: dict[str, Signer]) -> None:
    convert = opts.convert or Options(out_dir=opts.cache_dir / "work")
    convert.out_dir.mkdir(parents=True, exist_ok=True)
    mine = {u.key: [a for a in actions if a.image == u.image.name and a.version == u.version.version
                    and a.action in ("create", "discard")] for u in todo}
    with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        futures = [pool.submit(_publish_unit, u, mine[u.key], seen, opts, convert, progress,
                               signers.get(u.image.name))
                   for u in todo if mine[u.key]]
        for future in futures:
            done, discarded, uploaded, failures = future.result()
            report.images += done
            report.changes += discarded
            report.uploaded_bytes += uploaded
            report.failures += failures


def _publish_unit(unit: Unit, actions: list[Action], seen: Survey, opts: SyncOptions, convert: Options,
                  progress: Progress | None,
                  signer: Signer | None = None) -> tuple[list[Action], list[Action], int, list[str]]:
    """Download and verify the source, then publish each profile to the clouds that lack it."""
    image, label = unit.image, unit.version.version
    sha = seen.shas[image.name][label]
    creates = [a for a in actions if a.action == "create"]
    done: list[Action] = []
    uploaded = 0
    try:
        source = sources.fetch(unit.version, sha, opts.cache_dir, opts.limits)
    except ImgpipeError as exc:
        return [replace(a, action="failed") for a in creates], [], 0, [f"{unit.key}: {exc}"]
    discards = [a for a in actions if a.action == "discard"]
    for cloud in {a.cloud for a in discards}:
        rotation.apply(seen.clouds[cloud], [a for a in discards if a.cloud == cloud])
    failures = [f"discard {a.name}: {a.error}" for a in discards if a.error]
    targets: dict[tuple[str, ...], list[str]] = {}
    for profile in image.profiles:
        clouds = tuple(sorted(a.cloud for a in creates if a.profile == profile))
        if clouds:
            targets.setdefault(clouds, []).append(profile)
    for clouds, profile_names in targets.items():
        req = PublishRequest(source=source, profiles=[opts.profiles[p] for p in profile_names], name=image.name,
                             name_template=image.name_template.replace("{version}", label),
                             properties={**image.properties, IMAGE_KEY: image.name, VERSION_KEY: label},
                             tags=list(image.tags), visibility=image.visibility, source_sha256=sha,
                             profile_properties=image.profile_properties,
                             cloud_placements={c: seen.placement(image, c) for c in clouds}, signer=signer)
        how = Preparation(guest_properties=image.guest_properties, unpack_cache=opts.cache_dir)
        try:
            result = publish(req, [seen.clouds[c] for c in clouds], convert, progress, how=how)
        except ImgpipeError as exc:
            failures.append(f"{unit.key}: {exc}")
            continue
        failures += [f"{unit.key}: {f}" for f in result.failures]
        for r in result.results:
            done.append(Action(r.cloud, image.name, r.profile, r.name, label, r.status, r.image_id))
            uploaded += r.size if r.status == "created" else 0
    finished = {(a.cloud, a.profile) for a in done}
    done += [replace(a, action="failed") for a in creates if (a.cloud, a.profile) not in finished]
    return done, discards, uploaded, failures


def _rotate(images: list[Image], seen: Survey, opts: SyncOptions, report: SyncReport) -> None:
    """Rotate from a fresh look, and only images whose newest version is active everywhere."""
    already = len(seen.failures)
    look(seen, images)
    report.failures += seen.failures[already:]
    for image in images:
        reason = rotation.not_ready(image, seen.states.get(image.name, {}), seen.shas.get(image.name, {}))
        if reason:
            report.failures.append(f"{image.name}: not rotated: {reason}")
            continue
        actions = plan([], seen, rotate=[image])
        for cloud in image.clouds:
            rotation.apply(seen.clouds[cloud], [a for a in actions if a.cloud == cloud])
        report.changes += actions
        report.failures += [f"{a.action} {a.name}: {a.error}" for a in actions if a.error]
