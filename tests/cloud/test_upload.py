"""Publishing to a real local Glance: properties, hashes, idempotency, concurrency."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from imgpipe import profiles
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api
from imgpipe.conversion.convert import Options
from imgpipe.errors import GlanceRefusedError
from imgpipe.hashing import sha256_file
from imgpipe.pipeline.publish import PublishRequest, publish
from imgpipe.cloud.upload import SOURCE_KEY, UploadRequest, upload

pytestmark = pytest.mark.slow


def _images(cloud: clouds.Cloud, name: str) -> list[dict]:
    return glance_api.list_images(cloud, {"name": name})


def _request(path: Path, name: str, profile: str = "kvm", **kw: object) -> UploadRequest:
    p = profiles.load_all()[profile]
    kw.setdefault("source_sha256", sha256_file(path))
    return UploadRequest(path=path, name=name, profile=p.name, disk_format=p.disk_format,
                         container_format=p.container_format, virtual_size=128 << 20,
                         properties=dict(p.properties), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def published(glance_server, sample_qcow2: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OS_CLIENT_CONFIG_FILE", str(glance_server.clouds_yaml))
        cloud = clouds.connect("test")
    req = PublishRequest(source=sample_qcow2, profiles=profiles.select(["all"], profiles.load_all()), name="guest",
                         tags=["imgpipe-test"])
    report = publish(req, [cloud], Options(out_dir=tmp_path_factory.mktemp("work"), verify=True))
    assert report.failures == []
    return cloud, report


def test_every_profile_published_with_its_properties(published) -> None:
    cloud, report = published
    by_name = {r.name: r for r in report.results}
    assert len(by_name) == len(profiles.select(["all"], profiles.load_all()))
    for profile in profiles.select(["all"], profiles.load_all()):
        result = by_name[f"guest-{profile.name}"]
        image = glance_api.get_image(cloud, result.image_id)
        assert image["status"] == "active"
        assert image["disk_format"] == profile.disk_format
        assert image["container_format"] == profile.container_format
        for key, value in profile.properties.items():
            assert image[key] == value, (profile.name, key)
        assert image["imgpipe_profile"] == profile.name
        assert image["min_disk"] == 1 and image["tags"] == ["imgpipe-test"]
        assert image["visibility"] == "private"
        assert len(image["owner_specified.openstack.sha256"]) == 64


def test_hashes_equal_the_uploaded_bytes(published, tmp_path: Path) -> None:
    cloud, report = published
    result = next(r for r in report.results if r.name == "guest-vmware")
    image = glance_api.get_image(cloud, result.image_id)
    data = cloud.image.get(f"/v2/images/{image['id']}/file").content
    assert hashlib.md5(data).hexdigest() == image["checksum"]
    assert hashlib.sha512(data).hexdigest() == image["os_hash_value"]
    assert hashlib.sha256(data).hexdigest() == image["owner_specified.openstack.sha256"]
    assert len(data) == image["size"]
    assert image["virtual_size"] == 128 << 20  # Glance's own inspection agrees


def test_republish_is_a_no_op(published, sample_qcow2: Path, tmp_path: Path) -> None:
    cloud, first = published
    req = PublishRequest(source=sample_qcow2, profiles=profiles.select(["kvm", "vmware"], profiles.load_all()), name="guest")
    report = publish(req, [cloud], Options(out_dir=tmp_path))
    assert {r.status for r in report.results} == {"unchanged"}
    assert list(tmp_path.iterdir()) == []  # nothing was even converted
    assert len(_images(cloud, "guest-kvm")) == 1


def test_force_uploads_again(glance, sample_qcow2: Path, tmp_path: Path) -> None:
    cloud = clouds.connect("test")
    out = tmp_path / "x.qcow2"
    out.write_bytes(sample_qcow2.read_bytes())
    first = upload(cloud, _request(out, "forced"))
    second = upload(cloud, _request(out, "forced", force=True))
    assert first.status == second.status == "created" and first.image_id != second.image_id


def test_wrong_format_is_refused_and_removed(glance, sample_raw: Path) -> None:
    """Glance's inspector refuses raw bytes declared qcow2 (415); no image may remain."""
    cloud = clouds.connect("test")
    with pytest.raises(GlanceRefusedError, match="Glance says the content is not a valid qcow2"):
        upload(cloud, _request(sample_raw, "mislabelled"))
    assert _images(cloud, "mislabelled") == []


def test_concurrent_publishes_leave_one_image(glance, sample_qcow2: Path) -> None:
    cloud = clouds.connect("test")
    results: list = []
    errors: list = []

    def run() -> None:
        try:
            results.append(upload(clouds.connect("test"), _request(sample_qcow2, "raced")))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    images = _images(cloud, "raced")
    assert len(images) == 1 and images[0]["status"] == "active"
    assert {r.image_id for r in results} == {images[0]["id"]}
    assert images[0][SOURCE_KEY] == sha256_file(sample_qcow2)


def test_docker_archive_published_as_repo_tag(glance, tmp_path: Path) -> None:
    from imgpipe_dev.sample_disk import docker_archive

    archive = docker_archive(tmp_path / "img.tar", ["library/hello:1.0"])
    cloud = clouds.connect("test")
    req = PublishRequest(source=archive, profiles=profiles.select(["docker"], profiles.load_all()), name="ignored")
    [result] = publish(req, [cloud], Options(out_dir=tmp_path)).results
    image = glance_api.get_image(cloud, result.image_id)
    assert image["name"] == "library/hello:1.0" and image["container_format"] == "docker"
    again = publish(req, [cloud], Options(out_dir=tmp_path)).results
    assert [r.status for r in again] == ["unchanged"]


def test_hidden_image_still_counts_as_published(glance, sample_qcow2: Path, tmp_path: Path) -> None:
    """A rollback to an older, hidden version must not upload a second copy."""
    cloud = clouds.connect("test")
    out = tmp_path / "h.qcow2"
    out.write_bytes(sample_qcow2.read_bytes())
    first = upload(cloud, _request(out, "hidden-one"))
    glance_api.update_properties(cloud, glance_api.get_image(cloud, first.image_id), {"os_hidden": True})
    again = upload(cloud, _request(out, "hidden-one"))
    assert again.status == "unchanged" and again.image_id == first.image_id


def test_crashed_runs_leftover_is_replaced_not_waited_for(glance, sample_qcow2: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on another host crashed mid-upload: Glance has not seen its image touched for
    STALE_AFTER by Glance's own clock, though the heartbeat the peer wrote (its host's clock,
    an hour ahead) looks fresh."""
    import time

    from imgpipe.cloud import upload as upload_mod

    monkeypatch.setattr(upload_mod, "STALE_AFTER", 1.0)
    cloud = clouds.connect("test")
    req = _request(sample_qcow2, "leftover")
    fields = {**upload_mod._fields(req, "crashed-run"), "id": upload_mod._slot_id(req, 0),
              upload_mod.OWNER_KEY: "another-host:4242:1.00",
              upload_mod.HEARTBEAT_KEY: f"{time.time() + 3600:.0f}"}
    leftover = glance_api.create_image(cloud, fields)
    time.sleep(2.5)  # Glance's updated_at has one-second resolution
    started = time.monotonic()
    result = upload(cloud, req)
    assert time.monotonic() - started < upload_mod.WAIT_FOR_PEER / 10
    assert result.status == "created" and result.image_id != leftover["id"]
    assert glance_api.get_image(cloud, leftover["id"]) is None
    assert [i["id"] for i in _images(cloud, "leftover")] == [result.image_id]


def test_a_live_peer_is_waited_for_whatever_its_hosts_clock(glance, sample_qcow2: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer on a host whose clock is an hour behind writes heartbeats that look an hour old;
    Glance touched its image just now, so it is alive and its upload is not deleted."""
    import time

    from imgpipe.cloud import upload as upload_mod
    from imgpipe.errors import UploadError

    monkeypatch.setattr(upload_mod, "WAIT_FOR_PEER", 2.0)
    cloud = clouds.connect("test")
    req = _request(sample_qcow2, "skewed-peer")
    fields = {**upload_mod._fields(req, "peer-run"), "id": upload_mod._slot_id(req, 0),
              upload_mod.OWNER_KEY: "another-host:4242:1.00",
              upload_mod.HEARTBEAT_KEY: f"{time.time() - 3600:.0f}"}
    peer = glance_api.create_image(cloud, fields)
    with pytest.raises(UploadError, match=f"concurrent upload {peer['id']} did not finish in time"):
        upload(cloud, req)
    assert glance_api.get_image(cloud, peer["id"])["status"] == "queued"
    glance_api.delete_image(cloud, peer["id"])


def test_heartbeat_moves_glances_updated_at(glance, sample_qcow2: Path) -> None:
    """The takeover reads updated_at: each beat (a PATCH) must move it, by Glance's clock."""
    import time

    from imgpipe.cloud import upload as upload_mod

    cloud = clouds.connect("test")
    image = glance_api.create_image(cloud, upload_mod._fields(_request(sample_qcow2, "beating"), "run"))
    time.sleep(1.1)
    beaten = glance_api.update_properties(cloud, image, {upload_mod.HEARTBEAT_KEY: "1"})
    _, now = glance_api.get_image_at(cloud, image["id"])
    assert glance_api.timestamp(beaten["updated_at"]) > glance_api.timestamp(image["updated_at"])
    assert abs(now - glance_api.timestamp(beaten["updated_at"])) < upload_mod.STALE_AFTER
    glance_api.delete_image(cloud, image["id"])


def test_live_upload_beats_its_heart(glance, sample_qcow2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgpipe.cloud import upload as upload_mod

    monkeypatch.setattr(upload_mod, "HEARTBEAT", 0.2)
    beats: list[dict] = []
    real = glance_api.update_properties

    def spy(cloud, image, props):  # records the real PATCH calls made against the real Glance
        if upload_mod.HEARTBEAT_KEY in props:
            beats.append(props)
        return real(cloud, image, props)

    monkeypatch.setattr(glance_api, "update_properties", spy)
    cloud = clouds.connect("test")
    monkeypatch.setattr(upload_mod.glance, "put_data", _slow_put(glance_api.put_data))
    result = upload(cloud, _request(sample_qcow2, "heartbeat"))
    assert result.status == "created" and beats


def test_no_heartbeat_is_in_flight_when_the_last_bytes_leave(glance, sample_qcow2: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Glance's PATCH writes back the status and hashes it read: a beat still on its way when the
    PUT's last save lands would put 'saving' back over 'active'. The beats here are slow (each
    waits 0.3 s before its real PATCH) and back to back, so without the quiet before the last
    chunk one is nearly always in flight then; the image must still end active with our hashes."""
    import time

    from imgpipe.cloud import upload as upload_mod

    monkeypatch.setattr(upload_mod, "HEARTBEAT", 0.01)
    events: list[str] = []
    real_patch = glance_api.update_properties

    def slow_beat(cloud, image, props):
        if upload_mod.HEARTBEAT_KEY not in props:
            return real_patch(cloud, image, props)
        events.append("beat")
        time.sleep(0.3)
        try:
            return real_patch(cloud, image, props)
        finally:
            events.append("beat done")

    class Paced:  # the real body, a little slower, noting when its last chunk is handed over
        def __init__(self, body):
            self.body = body

        def __len__(self) -> int:
            return len(self.body)

        def __iter__(self):
            sent = 0
            for chunk in self.body:
                sent += len(chunk)
                if sent >= len(self.body):
                    events.append("last chunk")
                time.sleep(0.05)
                yield chunk

    real_put = glance_api.put_data
    monkeypatch.setattr(glance_api, "update_properties", slow_beat)
    monkeypatch.setattr(upload_mod.glance, "put_data",
                        lambda cloud, image_id, body, *a, **kw: real_put(cloud, image_id, Paced(body), *a, **kw))
    cloud = clouds.connect("test")
    result = upload(cloud, _request(sample_qcow2, "quiet-before-last"))
    assert result.status == "created" and "beat" in events
    last = len(events) - 1 - events[::-1].index("last chunk")
    assert events[:last].count("beat") == events[:last].count("beat done"), events
    assert "beat" not in events[last:], events
    image = glance_api.get_image(cloud, result.image_id)
    assert image["status"] == "active"
    assert image["os_hash_value"] == hashlib.sha512(sample_qcow2.read_bytes()).hexdigest()


def _slow_put(real):
    def put(cloud, image_id, body, disk_format, *args, **kwargs):
        import time

        time.sleep(0.5)  # long enough for two beats, with the real PUT after it
        return real(cloud, image_id, body, disk_format, *args, **kwargs)

    return put


def test_profile_properties_apply_to_their_profile_only(glance, sample_qcow2: Path, tmp_path: Path) -> None:
    """os_distro would override vmware_ostype on vCenter: it must reach kvm but not vmware."""
    cloud = clouds.connect("test")
    req = PublishRequest(source=sample_qcow2, profiles=profiles.select(["kvm", "vmware"], profiles.load_all()), name="scoped",
                         properties={"os_version": "24.04"},
                         profile_properties={"kvm": {"os_distro": "ubuntu"},
                                             "vmware": {"vmware_ostype": "ubuntu64Guest"}})
    results = {r.profile: glance_api.get_image(cloud, r.image_id)
               for r in publish(req, [cloud], Options(out_dir=tmp_path)).results}
    assert results["kvm"]["os_distro"] == "ubuntu" and "vmware_ostype" not in results["kvm"]
    assert results["vmware"]["vmware_ostype"] == "ubuntu64Guest" and "os_distro" not in results["vmware"]
    assert results["kvm"]["os_version"] == results["vmware"]["os_version"] == "24.04"


def test_forced_upload_takes_its_anchor_from_the_bytes_sent(glance, sample_qcow2: Path, tmp_path: Path) -> None:
    """--force looks nothing up, so no sha256 pre-pass: the send's digest becomes the anchor,
    and a later run that does look finds that image by it."""
    cloud = clouds.connect("test")
    out = tmp_path / "anchor.qcow2"
    out.write_bytes(sample_qcow2.read_bytes())
    forced = upload(cloud, _request(out, "anchored", force=True, source_sha256=None))
    image = glance_api.get_image(cloud, forced.image_id)
    assert image[SOURCE_KEY] == image["owner_specified.openstack.sha256"] == sha256_file(out)
    assert image["os_hash_value"] == hashlib.sha512(out.read_bytes()).hexdigest()
    again = upload(cloud, _request(out, "anchored", source_sha256=None))
    assert again.status == "unchanged" and again.image_id == forced.image_id


def test_plain_upload_asks_glance_only_what_it_needs(glance, sample_qcow2: Path) -> None:
    """create, PUT, one GET whose hashes verify the bytes, one PATCH that labels them: no
    /v2/info reads (Glance's own access log says what was asked). Beside them, one list of
    this name's images that earlier runs may have left. md5 is not computed while sending
    (sha512 is): the label is Glance's checksum, which must be the file's."""
    cloud = clouds.connect("test")
    log = glance.logs["glance"]
    before = _settled_size(log)
    result = upload(cloud, _request(sample_qcow2, "few-calls", force=True))
    asked = _requests_logged(log, before, until="PATCH")
    mine = [a for a in asked if a != "GET /v2/images"]  # the sweep's list, whenever it ran
    assert mine == ["POST /v2/images", f"PUT /v2/images/{result.image_id}/file",
                    f"GET /v2/images/{result.image_id}", f"PATCH /v2/images/{result.image_id}"]
    assert asked.count("GET /v2/images") == 1 and len(asked) == 5
    image = glance_api.get_image(cloud, result.image_id)
    assert image["owner_specified.openstack.md5"] == hashlib.md5(sample_qcow2.read_bytes()).hexdigest()
    assert image["owner_specified.openstack.sha256"] == hashlib.sha256(sample_qcow2.read_bytes()).hexdigest()


def _settled_size(log: Path, quiet: float = 0.5, timeout: float = 10.0) -> int:
    """The access log's size once earlier tests' lines are all written: gunicorn writes a line
    after its response, so a request that just ended can still land after an offset taken now."""
    import time

    size, deadline = log.stat().st_size, time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = log.stat().st_size
        if now == size:
            break
        size = now
    return size


def _requests_logged(log: Path, offset: int, until: str, timeout: float = 10.0) -> list[str]:
    """"METHOD PATH" (no query) of the /v2 requests in gunicorn's access log after offset,
    once a request with method `until` is there (gunicorn writes a line just after its response)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        asked = [" ".join(line.split('"')[1].split()[:2]).split("?")[0] for line in lines
                 if '"' in line and ' /v2/' in line]
        if any(a.startswith(f"{until} ") for a in asked) or time.monotonic() > deadline:
            return asked
        time.sleep(0.1)
