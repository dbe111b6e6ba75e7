"""Convert once per distinct output, upload each output to every cloud, overlapping the two.

Conversion is CPU/disk bound and upload is network/server bound, so while one output
uploads (to all clouds at once) the next one converts. Profiles already published from
this exact source (same name, profile, source sha256) are not even converted.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from imgpipe import owner, settings
from imgpipe.boot.check import DEFAULT_EXPECT, DEFAULT_TIMEOUT, BootResult
from imgpipe.cloud import keymanager
from imgpipe.cloud.clouds import Cloud
from imgpipe.cloud.import_method import Placement
from imgpipe.cloud.upload import (
    Cancelled,
    UploadRequest,
    UploadResult,
    delete_unfinished,
    find_unchanged,
    sweep_abandoned,
    upload,
)
from imgpipe.conversion.convert import Options, Output, conversion_groups, convert_image, docker_output
from imgpipe.errors import ImgpipeError
from imgpipe.guest.policy import derive
from imgpipe.hashing import sha256_file
from imgpipe.pipeline.boot import boot_output
from imgpipe.pipeline.convert import conversion_options
from imgpipe.pipeline.prepared import Preparation, prepare
from imgpipe.profiles import Profile
from imgpipe.progress import Progress
from imgpipe.signing import Signer

LOG = logging.getLogger("imgpipe.pipeline.publish")
DEFAULT_TEMPLATE = settings.NAME_TEMPLATE
WORK_PREFIX = "imgpipe-publish-"


@dataclass(kw_only=True)
class PublishRequest:
    source: Path
    profiles: list[Profile]
    name: str
    name_template: str = DEFAULT_TEMPLATE
    properties: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    visibility: str | None = "private"
    force: bool = False
    source_sha256: str | None = None
    profile_properties: dict[str, dict[str, str]] = field(default_factory=dict)
    boot_check: BootCheck | None = None
    placement: Placement = field(default_factory=Placement)
    cloud_placements: dict[str, Placement] = field(default_factory=dict)  # a catalog's per-cloud stores
    signer: Signer | None = None  # sign every output; each cloud's certificate is checked before converting

    def given(self, profile: Profile) -> dict[str, str]:
        """What the user gave for this profile's image: run-wide, then per-profile properties."""
        return {**self.properties, **self.profile_properties.get(profile.name, {})}

    def image_name(self, profile: Profile, out: Output | None = None) -> str:
        if out is not None and out.docker_name:
            return out.docker_name  # nova-docker/zun look images up by repo:tag
        return self.name_template.format(name=self.name, profile=profile.name)


@dataclass(frozen=True)
class BootCheck:
    """publish --boot-check: boot each output as its profile before any of its uploads start."""

    log_dir: Path
    expect: str = DEFAULT_EXPECT
    timeout: float = DEFAULT_TIMEOUT
    parallel: int = 2  # TCG guests: one per core on the machines this runs on
    config_drive: bool = False  # pass only when user data from a nova-style config drive runs
    metadata_service: bool = False  # the same through a nova-style metadata service


@dataclass
class PublishReport:
    results: list[UploadResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    derived: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)


def publish(req: PublishRequest, clouds: list[Cloud], opts: Options, progress: Progress | None = None, *,
            how: Preparation | None = None) -> PublishReport:
    """Publish req.source for req.profiles to every cloud. opts: how to convert (its out_dir holds
    this run's work directory); how: what the source may be."""
    sha = req.source_sha256 or sha256_file(req.source)
    report = PublishReport()
    if req.signer is not None:  # a certificate a cloud would refuse stops the run before any work
        for cloud in clouds:
            keymanager.certificate_id(cloud, req.signer)
    todo = _not_yet_published(req, clouds, sha, report)
    if not todo:
        return report  # nothing to convert: the source is not even unpacked
    for gone in owner.sweep(opts.out_dir, WORK_PREFIX):
        LOG.warning("removed %s, the work directory of a dead run", gone)
    try:
        _convert_and_upload(req, clouds, opts, sha, todo, report, progress, how)
    except BaseException:
        for cloud in clouds:  # what the stopped uploads could not delete themselves
            delete_unfinished(cloud)
        raise
    return report


def _convert_and_upload(req: PublishRequest, clouds: list[Cloud], opts: Options, sha: str, todo: list[Profile],
                        report: PublishReport, progress: Progress | None, how: Preparation | None) -> None:
    with _Run.started(req, clouds, sha, opts.out_dir, progress) as run, \
            prepare(req.source, todo, replace(how or Preparation(), work_dir=run.work, scratch_dir=run.work,
                                              clouds=tuple((c.name, c.metadata_paths) for c in clouds)),
                    req.given, sha) as prepared:
        report.derived = {p.name: derive.to_dict(prepared.derived(p)) for p in todo} if prepared.facts else {}
        group_opts = replace(conversion_options(prepared, todo, opts, req.given), out_dir=run.work, out_file=None,
                             in_place=True)
        for group in conversion_groups(todo):
            try:
                outputs = (convert_image(prepared.info, group, group_opts, progress) if prepared.info
                           else [docker_output(req.source, group)])
            except ImgpipeError as exc:
                report.failures.append(str(exc))
                continue
            run.boot_and_upload(group, outputs, group_opts)  # while the next group converts
        run.wait(report)  # a passthrough upload reads the unpacked disk itself: wait inside prepare()


def _not_yet_published(req: PublishRequest, clouds: list[Cloud], sha: str, report: PublishReport) -> list[Profile]:
    """Profiles some cloud still lacks; the others' images are reported as they are."""
    todo: list[Profile] = []
    for profile in req.profiles:
        unchanged = [] if req.force or not profile.converts else [
            _unchanged(c, req.image_name(profile), profile.name, sha, req.cloud_placements.get(c.name, req.placement),
                       req.signer)
            for c in clouds]
        if unchanged and all(unchanged):
            report.results += [u for u in unchanged if u is not None]
        else:
            todo.append(profile)
    return todo


@dataclass
class _Run:
    """One publish run's shared state: its work directory, the upload and boot pools, and the
    uploads submitted so far."""

    req: PublishRequest
    clouds: list[Cloud]
    sha: str
    work: Path
    uploads: ThreadPoolExecutor
    boots: ThreadPoolExecutor
    stop: threading.Event
    progress: Progress | None
    submitted: list[tuple[str, Future[UploadResult]]] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def started(cls, req: PublishRequest, clouds: list[Cloud], sha: str, parent: Path,
                progress: Progress | None) -> Iterator[_Run]:
        with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=parent) as work, \
                ThreadPoolExecutor(max_workers=max(1, len(clouds)) * 2) as uploads, \
                ThreadPoolExecutor(max_workers=req.boot_check.parallel if req.boot_check else 1) as boots, \
                _stopping(uploads) as stop:
            owner.claim_dir(Path(work))
            yield cls(req, clouds, sha, Path(work), uploads, boots, stop, progress)

    def boot_and_upload(self, group: list[Profile], outputs: list[Output], opts: Options) -> None:
        """Each output boot-checks, then uploads to every cloud, in the pools."""
        req = self.req
        for out in outputs:
            for profile in (p for p in group if p.name in out.profiles):
                up = _request(req, profile, out, self.sha, opts.properties.get(profile.name, profile.properties))
                booted = self.boots.submit(_boot, req.boot_check, up, profile, self.stop) if req.boot_check else None
                for cloud in self.clouds:
                    label = f"{cloud.name}/{up.name}"
                    placed = replace(up, placement=req.cloud_placements.get(cloud.name, req.placement))
                    self.submitted.append((label, self.uploads.submit(
                        _upload_booted, booted, cloud, placed, _bytes_progress(self.progress, label, out.size),
                        self.stop)))

    def wait(self, report: PublishReport) -> None:
        for label, future in self.submitted:
            try:
                report.results.append(future.result())
            except ImgpipeError as exc:
                report.failures.append(f"{label}: {exc}")


@contextlib.contextmanager
def _stopping(uploads: ThreadPoolExecutor) -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM reaches only the main thread: queued uploads are dropped, running ones
    stop at their next chunk and delete their image, running boots end their qemu."""
    stop = threading.Event()
    try:
        yield stop
    except BaseException:
        stop.set()
        uploads.shutdown(wait=False, cancel_futures=True)
        raise


def _boot(check: BootCheck, up: UploadRequest, profile: Profile, stop: threading.Event) -> BootResult:
    """Boot with exactly the properties the image will carry; the log outlives the work dir."""
    log = check.log_dir / (up.name.replace("/", "_") + ".boot.log")
    result = boot_output(up.path, profile, up.properties, expect=check.expect, timeout=check.timeout, log=log,
                         stop=stop, config_drive=check.config_drive, metadata_service=check.metadata_service)
    if result.skipped:
        LOG.warning("%s: boot check skipped: %s", up.name, result.skipped)
    return result


def _upload_booted(booted: Future[BootResult] | None, cloud: Cloud, up: UploadRequest,
                   on_bytes: Callable[[int], None] | None, stop: threading.Event) -> UploadResult:
    """Nothing of an output that did not boot reaches any cloud (BootCheckError propagates)."""
    if booted is not None:
        booted.result()
    if stop.is_set():
        raise Cancelled(f"{up.name}: upload cancelled")
    return upload(cloud, up, on_bytes, stop)


def _unchanged(cloud: Cloud, name: str, profile: str, sha: str, placement: Placement,
               signer: Signer | None) -> UploadResult | None:
    """An unreachable cloud must not stop the others: its upload will fail and be reported."""
    try:
        found = find_unchanged(cloud, name, profile, sha, placement, signer)
        if found is not None:  # no upload will run to sweep what earlier runs left
            sweep_abandoned(cloud, name, profile)
        return found
    except ImgpipeError as exc:
        LOG.warning("cloud %s: cannot look for %s: %s", cloud.name, name, exc)
        return None


def _bytes_progress(progress: Progress | None, label: str, size: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda sent: progress(f"upload {label}", 100.0 * sent / max(size, 1), size)


def _request(req: PublishRequest, profile: Profile, out: Output, sha: str,
             properties: dict[str, str]) -> UploadRequest:
    return UploadRequest(
        path=out.path, name=req.image_name(profile, out), profile=profile.name,
        disk_format=profile.disk_format, container_format=profile.container_format,
        virtual_size=out.virtual_size, source_sha256=sha,
        properties=properties,
        tags=req.tags,
        visibility=req.visibility, force=req.force, placement=req.placement, signer=req.signer)
