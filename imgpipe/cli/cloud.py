"""Commands that talk to Glance: upload, publish, doctor."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgpipe import errors, profiles, render, settings, timing
from imgpipe.cli.base import Settings, _warn, app, handled, settings_of
from imgpipe.cli.options import (
    MAX_VIRTUAL_SIZE,
    AllowPartialStoresOpt,
    AllStoresOpt,
    CacertOpt,
    CloudOpt,
    Engine,
    EngineOpt,
    ForceBootOpt,
    ForceOpt,
    GuestPropertiesOpt,
    ImportMethodOpt,
    InsecureOpt,
    JobsOpt,
    JsonOpt,
    MaxVirtualSizeOpt,
    OneProfileOpt,
    PartitionOpt,
    ProfileOpt,
    ProfilePropertyOpt,
    PropertyOpt,
    RetriesOpt,
    SourceFormatOpt,
    SrcArg,
    StoreOpt,
    TagOpt,
    TimeoutOpt,
    VerifyOpt,
    Visibility,
    VisibilityOpt,
    connection,
    placement,
    regex,
)
from imgpipe.cli.sign import (
    SignCertIdOpt,
    SignCertOpt,
    SignHash,
    SignHashOpt,
    SignKeyOpt,
    SignKeyPasswordFileOpt,
    signer,
)
from imgpipe.cloud.import_method import ImportMethod

if TYPE_CHECKING:
    from imgpipe.cloud.upload import UploadResult

KEY_PROPERTIES = ("hypervisor_type", "vmware_disktype", "vmware_adaptertype", "hw_machine_type",
                  "vm_mode", "img_type", "hw_firmware_type", "architecture", "os_distro", "vmware_ostype")


def _properties(items: list[str] | None) -> dict[str, str]:
    props = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--property {item!r}: expected key=value")
        props[key] = value
    bad = [k for k in props if k in profiles.RESERVED or k.startswith(profiles.RESERVED_PREFIXES)]
    if bad:
        raise typer.BadParameter(f"--property {bad[0]}: reserved by Glance")
    return props


def _profile_properties(items: list[str] | None, selected: list[profiles.Profile]) -> dict[str, dict[str, str]]:
    scoped: dict[str, list[str]] = {}
    for item in items or []:
        profile, sep, rest = item.partition(":")
        if not sep or profile not in {p.name for p in selected}:
            raise typer.BadParameter(f"--profile-property {item!r}: expected PROFILE:key=value for a "
                                     "profile given with -p")
        scoped.setdefault(profile, []).append(rest)
    return {profile: _properties(rest) for profile, rest in scoped.items()}


def _show_results(run: Settings, results: list[UploadResult], failures: list[str],
                  derived: dict[str, dict[str, dict[str, str]]] | None = None) -> None:
    if run.json:
        run.emit_json({"images": [r.to_dict() for r in results], "failures": failures}
                         | ({"derived_properties": derived} if derived is not None else {}))
    else:
        render.table("images", ["cloud", "name", "id", "status", "disk/container", "properties"],
                     [(r.cloud, r.name, r.image_id, r.status, f"{r.disk_format}/{r.container_format}",
                       " ".join(f"{k}={r.properties[k]}" for k in KEY_PROPERTIES if k in r.properties))
                      for r in results])
    left = [f"cloud {r.cloud}: {r.name}: left behind in Glance: {', '.join(r.left_behind)}"
            for r in results if r.left_behind]
    if failures or left:
        head = f"{len(failures)} of {len(results) + len(failures)} uploads failed" if failures else "uploaded"
        raise errors.PartialFailure(f"{head}: " + "; ".join(failures + left))


@app.command("upload")
@handled
def upload_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A file converted for the profile.")],
    profile: OneProfileOpt,
    name: Annotated[str, typer.Option(metavar="NAME", help="Image name in Glance.")],
    cloud: CloudOpt = None,
    prop: PropertyOpt = None,
    tag: TagOpt = None,
    visibility: VisibilityOpt = Visibility.private,
    force: ForceOpt = False,
    import_method: ImportMethodOpt = ImportMethod.auto,
    store: StoreOpt = None,
    all_stores: AllStoresOpt = False,
    allow_partial_stores: AllowPartialStoresOpt = False,
    source_url: Annotated[str | None, typer.Option(
        metavar="URL",
        help="Where Glance can fetch FILE itself (web-download); FILE's hashes verify the result.")] = None,
    retries: RetriesOpt = settings.RETRY_ATTEMPTS,
    timeout: TimeoutOpt = settings.REQUEST_TIMEOUT,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    sign_key: SignKeyOpt = None,
    sign_key_password_file: SignKeyPasswordFileOpt = None,
    sign_cert: SignCertOpt = None,
    sign_cert_id: SignCertIdOpt = None,
    sign_hash: SignHashOpt = SignHash.sha256,
    as_json: JsonOpt = False,
) -> None:
    """Upload a converted FILE with its profile's properties.

    The upload is verified against the hashes Glance computes."""
    timing.mark("command")
    # The client libraries load and the token comes while the arguments and the file are
    # checked and the file hashed (an argument's error still comes first); the upload module,
    # which needs those libraries, is imported after.
    clouds = connection(cloud, insecure, os_cacert, retries, timeout).connect_soon()
    run = settings_of(ctx, as_json)
    signs = signer(sign_key, sign_key_password_file, sign_cert, sign_cert_id, sign_hash)
    chosen = profiles.select([profile], run.profiles())[0]
    where = placement(import_method, store, all_stores, allow_partial_stores)
    props = {**chosen.properties, **_properties(prop)}
    _warn(run, [chosen])
    with timing.span("imports"):
        from imgpipe.conversion.convert import converted_size
        from imgpipe.hashing import sha256_file
    with timing.span("inspect"):
        virtual_size = converted_size(file, chosen)
    size = file.stat().st_size
    # The lookup needs the anchor before any upload (once for every cloud); --force looks
    # nothing up, so the send's own sha256 becomes the anchor and the file is read once.
    # A signed file's sha256 comes with its signature's digest (one read for both).
    with timing.span("hash"):
        sha = None if force or signs else sha256_file(file)
    targets = clouds()
    with timing.span("imports"):
        from imgpipe.cloud.upload import UploadRequest, upload
    results = []
    with render.progress(quiet=as_json) as report:
        for target in targets:
            req = UploadRequest(path=file, name=name, profile=chosen.name, disk_format=chosen.disk_format,
                                container_format=chosen.container_format, virtual_size=virtual_size,
                                source_sha256=sha, properties=props, tags=tag or [], visibility=visibility.value,
                                force=force, placement=where, source_url=source_url, signer=signs,
                                known_digests={"sha256": sha} if sha else {})
            on_bytes = (lambda sent, t=target.name: report(f"upload {t}/{name}", 100.0 * sent / max(size, 1),
                                                           size)) if report else None
            results.append(upload(target, req, on_bytes))
    _show_results(run, results, [])


@app.command("publish")
@handled
def publish_cmd(
    ctx: typer.Context,
    src: SrcArg,
    profile: ProfileOpt,
    name: Annotated[str, typer.Option(metavar="NAME", help="Base image name.")],
    name_template: Annotated[str, typer.Option(
        metavar="TEMPLATE", help="Per-profile name; {name} and {profile}.")] = settings.NAME_TEMPLATE,
    cloud: CloudOpt = None,
    prop: PropertyOpt = None,
    profile_prop: ProfilePropertyOpt = None,
    tag: TagOpt = None,
    visibility: VisibilityOpt = Visibility.private,
    force: ForceOpt = False,
    import_method: ImportMethodOpt = ImportMethod.auto,
    store: StoreOpt = None,
    all_stores: AllStoresOpt = False,
    allow_partial_stores: AllowPartialStoresOpt = False,
    work_dir: Annotated[Path | None, typer.Option(
        metavar="DIR", exists=True, file_okay=False,
        help="Where converted files are kept during the run (default: $TMPDIR).")] = None,
    engine: EngineOpt = Engine.auto,
    verify: VerifyOpt = False,
    source_format: SourceFormatOpt = None,
    max_virtual_size: MaxVirtualSizeOpt = MAX_VIRTUAL_SIZE,
    partition: PartitionOpt = None,
    jobs: JobsOpt = None,
    retries: RetriesOpt = settings.RETRY_ATTEMPTS,
    timeout: TimeoutOpt = settings.REQUEST_TIMEOUT,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    boot: Annotated[bool, typer.Option("--boot-check", help="Boot each output under QEMU first; upload "
                                                            "nothing of one that does not boot.")] = False,
    boot_expect: Annotated[str, typer.Option(callback=regex, metavar="REGEX", help="With --boot-check: regex on "
                                             "the serial console that means booted.")] = settings.BOOT_EXPECT,
    boot_timeout: Annotated[float, typer.Option(
        min=1, metavar="SECONDS", help="With --boot-check: seconds per boot.")] = settings.BOOT_TIMEOUT,
    boot_config_drive: Annotated[bool, typer.Option("--config-drive", help="With --boot-check: attach a config "
                                                    "drive as nova does; pass only when its user data runs.")] = False,
    boot_metadata_service: Annotated[bool, typer.Option(
        "--metadata-service", help="With --boot-check: serve nova's metadata service to the guest; pass only "
                                   "when its user data runs.")] = False,
    force_boot: ForceBootOpt = False,
    guest_properties: GuestPropertiesOpt = True,
    sign_key: SignKeyOpt = None,
    sign_key_password_file: SignKeyPasswordFileOpt = None,
    sign_cert: SignCertOpt = None,
    sign_cert_id: SignCertIdOpt = None,
    sign_hash: SignHashOpt = SignHash.sha256,
    verify_signature: Annotated[bool, typer.Option(
        "--verify-signature", help="Download each signed image back and verify it as nova would (exit 25).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert SRC for each profile and publish it to every cloud."""
    run = settings_of(ctx, as_json)
    signs = signer(sign_key, sign_key_password_file, sign_cert, sign_cert_id, sign_hash)
    if verify_signature and signs is None:
        raise typer.BadParameter("--verify-signature needs --sign-key")
    selected = profiles.select(profile, run.profiles())
    from imgpipe.conversion.convert import Options
    from imgpipe.pipeline.prepared import Preparation
    from imgpipe.pipeline.publish import BootCheck, PublishRequest, publish

    work = work_dir or Path(tempfile.gettempdir())
    checks = BootCheck(work, boot_expect, boot_timeout, config_drive=boot_config_drive,
                       metadata_service=boot_metadata_service) if boot else None
    req = PublishRequest(source=src, profiles=selected, name=name, name_template=name_template,
                         properties=_properties(prop), tags=tag or [], visibility=visibility.value, force=force,
                         profile_properties=_profile_properties(profile_prop, selected), boot_check=checks,
                         placement=placement(import_method, store, all_stores, allow_partial_stores),
                         signer=signs)
    how = Preparation(claimed_format=source_format, max_virtual_size=max_virtual_size, force_boot=force_boot,
                      guest_properties=guest_properties)
    opts = Options(out_dir=work, verify=verify, engine=engine.value, partition=partition, jobs=jobs)
    connect = connection(cloud, insecure, os_cacert, retries, timeout)
    _warn(run, selected)
    targets = connect.connect_all()
    with render.progress(quiet=as_json) as report:
        result = publish(req, targets, opts, report, how=how)
    if verify_signature:
        from imgpipe.cli.sign import verify_published

        by_name = {t.name: t for t in targets}
        verify_published([(by_name[r.cloud], r.image_id) for r in result.results])
    _show_results(run, result.results, result.failures, result.derived)


@app.command("doctor")
@handled
def doctor_cmd(ctx: typer.Context, cloud: CloudOpt = None, retries: RetriesOpt = settings.RETRY_ATTEMPTS,
               timeout: TimeoutOpt = settings.REQUEST_TIMEOUT, insecure: InsecureOpt = False,
               os_cacert: CacertOpt = None, as_json: JsonOpt = False) -> None:
    """Check tools, firmware, profiles and each cloud's Glance.

    Every external tool and firmware file a command may need, with the Debian package that
    brings it (a missing optional one is a warning naming what will not work); the profiles;
    each cloud: that Glance answers, and what it accepts."""
    run = settings_of(ctx, as_json)
    from imgpipe.pipeline import doctor

    checks = doctor.run_checks(connection(cloud, insecure, os_cacert, retries, timeout), run.profile_dirs)
    if as_json:
        run.emit_json([c.__dict__ for c in checks])
    else:
        render.table("doctor", ["check", "ok", "detail"],
                     [(c.name, "yes" if c.ok else ("no (optional)" if c.optional else "NO"), c.detail)
                      for c in checks])
    failed = doctor.failure(checks)
    if failed is not None:
        raise failed
