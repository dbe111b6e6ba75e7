"""imgpipe_dev.localcloud brings up a real Glance (and Keystone) that the
clients imgpipe uses can talk to through the clouds.yaml it writes.

Slow: the first run installs the server venv (about 40 s); later runs start
Glance in about 3 s and Glance + Keystone in about 13 s.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import openstack.config
import pytest
from glanceclient import Client
from imgpipe_dev import localcloud

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def noauth_cloud(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("noauth")
    yield localcloud.start(state_dir)
    localcloud.stop(state_dir)


@pytest.fixture(scope="module")
def keystone_cloud(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("keystone")
    yield localcloud.start(state_dir, keystone=True, name="ks")
    localcloud.stop(state_dir)


def _session_and_endpoint(cloud, name: str):
    """What imgpipe does: clouds.yaml -> keystoneauth session + image endpoint."""
    region = openstack.config.OpenStackConfig(
        config_files=[str(cloud.clouds_yaml)]).get_one(cloud=name)
    session = region.get_session()
    endpoint = region.get_endpoint("image") or session.get_endpoint(
        service_type="image", interface="public")
    return session, endpoint


def _glance(cloud, name: str) -> Client:
    session, endpoint = _session_and_endpoint(cloud, name)
    return Client("2", session=session, endpoint_override=endpoint)


def _upload(glance: Client, name: str, data: bytes):
    image = glance.images.create(name=name, disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(data))
    return glance.images.get(image.id)


def _assert_stored(image, data: bytes) -> None:
    assert image.status == "active"
    assert image.size == len(data)
    assert image.checksum == hashlib.md5(data).hexdigest()
    assert image.os_hash_algo == "sha512"
    assert image.os_hash_value == hashlib.sha512(data).hexdigest()


def _http(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read() or b"null")


def test_noauth_glance_stores_an_upload(noauth_cloud):
    data = os.urandom(3 * 1024 * 1024 + 17)
    glance = _glance(noauth_cloud, noauth_cloud.name)

    image = _upload(glance, "noauth-upload", data)

    _assert_stored(image, data)
    assert b"".join(glance.images.data(image.id)) == data


def test_noauth_glance_needs_no_token(noauth_cloud):
    status, body = _http("GET", f"{noauth_cloud.glance_url}/v2/images")
    assert status == 200
    assert "images" in body


def test_start_again_reports_the_running_instance(noauth_cloud):
    again = localcloud.start(noauth_cloud.state_dir)
    assert again == noauth_cloud

    cli = subprocess.run([sys.executable, "-m", "imgpipe_dev.localcloud", "status",
                          "--state-dir", str(noauth_cloud.state_dir)],
                         check=False, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert noauth_cloud.glance_url in cli.stdout


def test_killed_glance_restarts_with_its_images(noauth_cloud):
    data = b"survives a crash" * 4096
    before = _upload(_glance(noauth_cloud, noauth_cloud.name), "before-kill", data)

    localcloud.kill(noauth_cloud.state_dir)
    assert localcloud.status(noauth_cloud.state_dir) == {"glance": False}
    with pytest.raises(urllib.error.URLError):
        _http("GET", f"{noauth_cloud.glance_url}/v2/images")

    restarted = localcloud.start(noauth_cloud.state_dir)
    assert restarted.glance_url == noauth_cloud.glance_url
    glance = _glance(restarted, restarted.name)
    _assert_stored(glance.images.get(before.id), data)


def test_keystone_member_uploads_into_its_project(keystone_cloud):
    assert keystone_cloud.cloud_names == ("ks", "ks-admin")
    session, endpoint = _session_and_endpoint(keystone_cloud, "ks")
    assert session.get_token()
    assert endpoint.rstrip("/") == keystone_cloud.glance_url
    data = os.urandom(1024 * 1024)

    image = _upload(Client("2", session=session, endpoint_override=endpoint),
                    "member-upload", data)

    _assert_stored(image, data)
    assert image.owner == session.get_project_id()


def test_keystone_rejects_a_wrong_password_and_a_missing_token(keystone_cloud):
    auth = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "member", "domain": {"id": "default"}, "password": "wrong"}}}}}
    with pytest.raises(urllib.error.HTTPError) as wrong_password:
        _http("POST", f"{keystone_cloud.keystone_url}/v3/auth/tokens", auth)
    assert wrong_password.value.code == 401

    with pytest.raises(urllib.error.HTTPError) as no_token:
        _http("GET", f"{keystone_cloud.glance_url}/v2/images")
    assert no_token.value.code == 401


def test_instances_are_independent(noauth_cloud, keystone_cloud):
    assert noauth_cloud.glance_url != keystone_cloud.glance_url
    _upload(_glance(noauth_cloud, noauth_cloud.name), "only-in-noauth", b"\0" * 512)

    admin_view = _glance(keystone_cloud, keystone_cloud.admin_name).images.list()

    assert "only-in-noauth" not in {image.name for image in admin_view}


def test_parallel_writers_get_no_server_errors(noauth_cloud):
    """Parallel create/upload/patch/delete: SQLite used to answer "database is locked" (500)."""
    import threading

    import requests

    url, answers = noauth_cloud.glance_url, []

    def writer(n: int) -> None:
        with requests.Session() as http:
            for i in range(4):
                made = http.post(f"{url}/v2/images", json={"name": f"par-{n}-{i}", "disk_format": "raw",
                                                           "container_format": "bare"})
                answers.append(made.status_code)
                if made.status_code != 201:
                    continue
                image = f"{url}/v2/images/{made.json()['id']}"
                answers.append(http.put(f"{image}/file", data=b"x" * 4096,
                                        headers={"Content-Type": "application/octet-stream"}).status_code)
                answers.append(http.patch(image, json=[{"op": "add", "path": "/k", "value": "v"}], headers={
                    "Content-Type": "application/openstack-images-v2.1-json-patch"}).status_code)
                answers.append(http.delete(image).status_code)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(answers)) == [200, 201, 204] and len(answers) == 6 * 4 * 4
    log = localcloud.server_errors(noauth_cloud.logs["glance"].read_text())
    assert log == []


def test_server_errors_are_those_nobody_injected():
    line = '127.0.0.1 - - [06/Dec/2026:17:28:11 +0000] "PUT /v2/images/x/file HTTP/1.1" {} 12 "-" "ua" fault={}'
    log = "\n".join([line.format(500, "-"), line.format(500, "reset"), line.format(204, "-"),
                     line.format(503, "-"), "2026-12-06 17:28:11 ERROR glance 500 fault=-"])
    assert localcloud.server_errors(log) == [line.format(500, "-"), line.format(503, "-")]
