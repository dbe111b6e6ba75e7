"""Wire faults between imgpipe and a real Glance: each run ends with exactly one verified
active image, or none and a clear error, and never leaves a queued/saving image behind."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import yaml
from faultproxy import Fault, FaultProxy

from imgpipe import profiles
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api
from imgpipe.errors import UploadError
from imgpipe.hashing import sha256_file
from imgpipe.retry import RetryLimits
from imgpipe.cloud.upload import UploadRequest, upload

pytestmark = pytest.mark.slow
FAST = RetryLimits(attempts=8, initial=0.2, maximum=2.0, total=120.0, max_retry_after=2.0)
PUT = r"^PUT /v2/images/[^/]+/file"


@pytest.fixture
def proxy(glance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    port = int(glance.glance_url.rsplit(":", 1)[1])
    fp = FaultProxy(("127.0.0.1", port))
    config = tmp_path / "clouds.yaml"
    data = yaml.safe_load(Path(glance.clouds_yaml).read_text())
    data["clouds"]["proxied"] = {"auth_type": "none", "auth": {"endpoint": fp.url},
                                 "image_endpoint_override": fp.url, "region_name": "RegionOne"}
    config.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    yield fp
    fp.close()


def _req(path: Path, name: str) -> UploadRequest:
    kvm = profiles.load_all()["kvm"]
    return UploadRequest(path=path, name=name, profile="kvm", disk_format="qcow2", container_format="bare",
                         virtual_size=128 << 20, source_sha256=sha256_file(path), properties=dict(kvm.properties))


def _assert_one_active(name: str, image_id: str | None) -> None:
    direct = clouds.connect("test")
    images = glance_api.list_images(direct, {"name": name})
    statuses = sorted(i["status"] for i in images)
    if image_id is None:
        assert statuses == []
    else:
        assert statuses == ["active"] and images[0]["id"] == image_id


@pytest.mark.parametrize("offset", [0, 1 << 20, 5 << 20])
def test_connection_reset_mid_upload(proxy: FaultProxy, sample_qcow2: Path, offset: int) -> None:
    proxy.faults.append(Fault(PUT, "reset", after=offset, times=2))
    result = upload(clouds.connect("proxied", limits=FAST), _req(sample_qcow2, f"reset-{offset}"))
    assert result.status == "created" and proxy.faults[0].fired == 2
    _assert_one_active(f"reset-{offset}", result.image_id)


def test_503_burst_with_retry_after(proxy: FaultProxy, sample_qcow2: Path) -> None:
    proxy.faults += [Fault(r"^POST /v2/images", "503", times=2, seconds=1),
                     Fault(PUT, "503", times=2, seconds=1)]
    result = upload(clouds.connect("proxied", limits=FAST), _req(sample_qcow2, "burst"))
    assert [f.fired for f in proxy.faults] == [2, 2]
    _assert_one_active("burst", result.image_id)


def test_410_on_put_is_retried_with_a_fresh_image(proxy: FaultProxy, sample_qcow2: Path) -> None:
    """Glance answers a PUT with 410 when the image's status changed under it (a heartbeat PATCH
    landing during its queued -> saving step): that image cannot take the bytes again, a fresh
    one can. The real race needs a PATCH within a few milliseconds of the PUT's status change,
    which a test cannot hit reliably, so the proxy answers this 410 (after reading the body, as
    Glance does); everything else is the real Glance."""
    proxy.faults.append(Fault(PUT, "gone"))
    result = upload(clouds.connect("proxied", limits=FAST), _req(sample_qcow2, "gone"))
    assert result.status == "created" and proxy.faults[0].fired == 1
    puts = [r.split("/")[3] for r in proxy.requests if re.match(PUT, r)]
    assert len(puts) == 2 and puts[0] != puts[1] and puts[1] == result.image_id
    assert f"DELETE /v2/images/{puts[0]}" in proxy.requests
    _assert_one_active("gone", result.image_id)
    assert glance_api.get_image(clouds.connect("test"), puts[0]) is None


def test_stall_past_timeout(proxy: FaultProxy, sample_qcow2: Path) -> None:
    proxy.faults.append(Fault(PUT, "stall", seconds=6))
    cloud = clouds.connect("proxied", timeout=2.0, limits=FAST)
    result = upload(cloud, _req(sample_qcow2, "stalled"))
    assert proxy.faults[0].fired == 1
    _assert_one_active("stalled", result.image_id)


def test_gives_up_with_clear_error_and_no_leftover(proxy: FaultProxy, sample_qcow2: Path) -> None:
    proxy.faults.append(Fault(PUT, "503", times=100, seconds=0))
    limits = RetryLimits(attempts=3, initial=0.1, maximum=0.2, total=30.0)
    with pytest.raises(UploadError, match=r"publish doomed: gave up after 3 attempts: .*HTTP 503"):
        upload(clouds.connect("proxied", limits=limits), _req(sample_qcow2, "doomed"))
    _assert_one_active("doomed", None)


def test_glance_killed_mid_upload_and_restarted(glance, proxy: FaultProxy, sample_qcow2: Path) -> None:
    from imgpipe_dev import localcloud

    def crash_and_restart() -> None:
        localcloud.kill(glance.state_dir)
        threading.Thread(target=lambda: (time.sleep(1.0), localcloud.start(glance.state_dir, name="test")),
                         daemon=True).start()

    proxy.faults.append(Fault(PUT, "hook", after=2 << 20, hook=crash_and_restart))
    limits = RetryLimits(attempts=10, initial=0.5, maximum=3.0, total=180.0)
    result = upload(clouds.connect("proxied", limits=limits), _req(sample_qcow2, "crashed"))
    assert proxy.faults[0].fired == 1
    _assert_one_active("crashed", result.image_id)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_mid_upload_leaves_no_image(proxy: FaultProxy, sample_qcow2: Path, signame: str) -> None:
    """Ctrl-C, or the SIGTERM systemd/Kubernetes send, deletes the half-uploaded image."""
    import os
    import signal
    import subprocess
    import sys

    from imgpipe.cli import EXIT_INTERRUPTED, EXIT_TERMINATED

    proxy.faults.append(Fault(PUT, "stall", seconds=20))
    # A shell's background job inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the default a user's terminal gives it.
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", "upload", str(sample_qcow2), "-p", "kvm",
                             "--name", f"interrupted-{signame}", "--cloud", "proxied"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any(r.startswith("PUT ") for r in proxy.requests) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(r.startswith("PUT ") for r in proxy.requests)
    proc.send_signal(getattr(signal, signame))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (EXIT_INTERRUPTED if signame == "SIGINT" else EXIT_TERMINATED), stderr
    assert ("interrupted" if signame == "SIGINT" else "terminated") in stderr
    _assert_one_active(f"interrupted-{signame}", None)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_publish_stops_its_uploads_and_deletes_their_images(
        proxy: FaultProxy, sample_qcow2: Path, tmp_path: Path, signame: str) -> None:
    """Ctrl-C / SIGTERM while uploads run on a slow link and more wait: the running ones stop
    at their next chunk and delete their images, the queued ones never start."""
    import os
    import signal
    import subprocess
    import sys

    from imgpipe.cli import EXIT_INTERRUPTED, EXIT_TERMINATED

    proxy.faults.append(Fault(PUT, "slow", times=100, seconds=2.0))  # 2 s per MiB: 20 s per upload
    selected = ["kvm", "qemu", "kvm-raw", "lxc", "uml"]
    name = f"stopped-{signame}"
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", "publish", str(sample_qcow2),
                             *[a for p in selected for a in ("-p", p)], "--name", name, "--cloud", "proxied",
                             "--work-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while sum(r.startswith("PUT ") for r in proxy.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(r.startswith("PUT ") for r in proxy.requests) == 2
    proc.send_signal(getattr(signal, signame))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (EXIT_INTERRUPTED if signame == "SIGINT" else EXIT_TERMINATED), stderr
    assert sum(r.startswith("PUT ") for r in proxy.requests) < len(selected)
    for profile in selected:
        _assert_one_active(f"{name}-{profile}", None)
    assert not list(tmp_path.glob("imgpipe-publish-*"))


def test_failed_publish_json_is_one_document(proxy: FaultProxy, sample_qcow2: Path, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    proxy.faults.append(Fault(PUT, "503", times=100, seconds=0))
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", "publish", str(sample_qcow2), "-p", "kvm",
                           "--name", "onejson", "--cloud", "proxied", "--retries", "2", "--json",
                           "--work-dir", str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    report = json.loads(proc.stdout)  # fails if a second document follows
    assert proc.returncode == 18 and report["images"] == [] and "HTTP 503" in report["failures"][0]
    _assert_one_active("onejson", None)


def test_killed_publish_is_taken_over_at_once_and_its_work_dir_removed(
        proxy: FaultProxy, sample_qcow2: Path, tmp_path: Path) -> None:
    """SIGKILL (OOM killer, lost CI runner) mid-upload; the rerun on this host sees the owner
    is dead instead of waiting for its heartbeat to go stale, and removes its work dir."""
    import json
    import os
    import signal
    import subprocess
    import sys

    argv = [sys.executable, "-m", "imgpipe.cli", "publish", str(sample_qcow2), "-p", "lxc", "--name", "killed",
            "--cloud", "proxied", "--json", "--work-dir", str(tmp_path)]
    proxy.faults.append(Fault(PUT, "stall", seconds=60))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.monotonic() + 90
    while not any(r.startswith("PUT ") for r in proxy.requests) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(r.startswith("PUT ") for r in proxy.requests)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert list(tmp_path.glob("imgpipe-publish-*")), "the killed run should have left its work dir"
    proxy.faults.clear()
    rerun = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    (result,) = json.loads(rerun.stdout)["images"]
    assert result["status"] == "created"
    assert [o.split(":")[1] for o in result["took_over_from"]] == [str(proc.pid)]
    assert not list(tmp_path.glob("imgpipe-publish-*"))
    _assert_one_active(result["name"], result["image_id"])


def test_an_image_glance_will_not_delete_is_named_and_swept_by_the_next_run(
        proxy: FaultProxy, sample_qcow2: Path) -> None:
    """Glance fails the PUT and then every DELETE of that image (the "database is locked" 500s
    of issue 20): the upload still succeeds into a new image, names the one left behind (exit
    18), and the next run, finding it by its provenance properties, deletes it."""
    import json
    import os
    import subprocess
    import sys

    proxy.faults += [Fault(PUT, "503", times=1), Fault(r"^DELETE /v2/images/", "503", times=1000)]
    argv = [sys.executable, "-m", "imgpipe.cli", "upload", str(sample_qcow2), "-p", "kvm", "--name", "orphaned",
            "--cloud", "proxied", "--retries", "3", "--json"]
    first = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert first.returncode == 18, first.stderr
    (result,) = json.loads(first.stdout)["images"]
    [left] = result["left_behind"]
    orphan = left.split("(")[1].rstrip(")")
    assert left == f"orphaned ({orphan})" and f"orphaned: left behind in Glance: {left}" in first.stderr
    assert any(r == f"DELETE /v2/images/{orphan}" for r in proxy.requests)
    direct = clouds.connect("test")
    assert sorted(i["status"] for i in glance_api.list_images(direct, {"name": "orphaned"})) == ["active", "queued"]
    proxy.faults.clear()
    again = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["images"][0]["status"] == "unchanged"
    assert f"deleting image {orphan} (queued), left by an earlier run" in again.stderr
    _assert_one_active("orphaned", result["image_id"])
