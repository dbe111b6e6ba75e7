"""Signed images against a real local Glance + Keystone + Barbican (one for the module).

Glance verifies each upload's signature with the certificate it reads from Barbican; imgpipe
verify reads the image back through cursive as nova does. "Two clouds" for catalog sync are
two projects of the same cloud, each with its own user, images and Barbican secrets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from faultproxy import Fault, FaultProxy
from signing_keys import PASSWORD, KeyPair, load, make
from typer.testing import CliRunner

from imgpipe import signing
from imgpipe.cli import EXIT_CODES, app
from imgpipe.cloud import clouds, glance
from imgpipe.errors import GlanceRefusedError, KeyManagerError, SignatureInvalidError, SigningError

pytestmark = pytest.mark.slow
runner = CliRunner()


@dataclass
class SignedCloud:
    state: Path
    config: Path
    keys: Path
    rsa: KeyPair
    ec: KeyPair
    raw: dict[str, Any]


def _add_project_user(cloud_yaml: dict[str, Any], name: str) -> dict[str, Any]:
    """A second project and member user, through the real Keystone (as an operator would)."""
    admin = cloud_yaml["clouds"]["sig-admin"]
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = admin["auth"]
    sess = session.Session(auth=v3.Password(**{k: auth[k] for k in (
        "auth_url", "username", "password", "project_name", "user_domain_name", "project_domain_name")}))
    ks = sess.get_endpoint(service_type="identity", interface="public").rstrip("/")
    if not ks.endswith("/v3"):
        ks += "/v3"
    project = sess.post(f"{ks}/projects", json={"project": {"name": name, "domain_id": "default"}}).json()["project"]
    password = "Second-Proj3ct-pw"
    user = sess.post(f"{ks}/users", json={"user": {"name": f"{name}-user", "domain_id": "default",
                                                    "password": password}}).json()["user"]
    role = sess.get(f"{ks}/roles", params={"name": "member"}).json()["roles"][0]
    sess.put(f"{ks}/projects/{project['id']}/users/{user['id']}/roles/{role['id']}")
    member = cloud_yaml["clouds"]["sig"]
    return dict(member, auth=dict(member["auth"], username=f"{name}-user", password=password, project_name=name))


@pytest.fixture(scope="module")
def signed_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedCloud]:
    from imgpipe_dev import localcloud

    state = tmp_path_factory.mktemp("signed-cloud")
    cloud = localcloud.start(state, keystone=True, barbican=True, name="sig")
    try:
        config = yaml.safe_load(cloud.clouds_yaml.read_text())
        config["clouds"]["sig2"] = _add_project_user(config, "second")
        path = state / "all-clouds.yaml"
        path.write_text(yaml.safe_dump(config))
        keys = tmp_path_factory.mktemp("keys")
        previous = os.environ.get("OS_CLIENT_CONFIG_FILE")
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(path)
        p521 = make(keys, "ec", ec.generate_private_key(ec.SECP521R1()))
        yield SignedCloud(state, path, keys, make(keys, "rsa"), p521, config)
    finally:
        localcloud.stop(state)
    if previous is None:
        os.environ.pop("OS_CLIENT_CONFIG_FILE", None)
    else:
        os.environ["OS_CLIENT_CONFIG_FILE"] = previous


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _run(sc: SignedCloud, *args: str, config: Path | None = None) -> Ran:
    """The CLI in process (as a user runs it, minus the interpreter start), the password in the
    environment as a CI job passes it."""
    result = runner.invoke(app, list(args), env={"OS_CLIENT_CONFIG_FILE": str(config or sc.config),
                                                 signing.PASSWORD_ENV: PASSWORD.decode()})
    return Ran(result.exit_code, result.stdout, result.stderr)


def _sign_args(pair: KeyPair, *extra: str) -> list[str]:
    return ["--sign-key", str(pair.key), "--sign-cert", str(pair.cert), *extra]


def _image(name: str, cloud: str = "sig") -> dict[str, Any]:
    target = clouds.connect(cloud)
    [found] = glance.list_images(target, {"name": name})
    return found


def _copy(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes())
    return dest


def test_rsa_pss_upload_is_verified_by_glance_and_by_verify(signed_cloud: SignedCloud, sample_qcow2: Path,
                                                            tmp_path: Path) -> None:
    disk = _copy(sample_qcow2, tmp_path / "rsa.qcow2")
    proc = _run(signed_cloud, "upload", str(disk), "-p", "kvm", "--name", "signed-rsa", "--cloud", "sig",
                "--json", *_sign_args(signed_cloud.rsa))
    assert proc.returncode == 0, proc.stderr
    [result] = json.loads(proc.stdout)["images"]
    image = _image("signed-rsa")
    assert image["status"] == "active" and result["status"] == "created"
    assert image[signing.KEY_TYPE] == "RSA-PSS" and image[signing.HASH_METHOD] == "SHA-256"
    assert "Successfully verified signature for image " + image["id"] in \
        (signed_cloud.state / "logs" / "glance.log").read_text()
    assert PASSWORD.decode() not in proc.stdout + proc.stderr and "PRIVATE KEY" not in proc.stdout + proc.stderr
    checked = _run(signed_cloud, "verify", image["id"], "--cloud", "sig", "--json",
                   "--trusted-cert-id", image[signing.CERT_UUID])
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["verified"][0]["size"] == disk.stat().st_size

    # Again, identical: nothing uploaded, the signature kept; the certificate secret is reused.
    again = _run(signed_cloud, "upload", str(disk), "-p", "kvm", "--name", "signed-rsa", "--cloud", "sig",
                 "--json", *_sign_args(signed_cloud.rsa))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["images"][0]["status"] == "unchanged"
    assert _image("signed-rsa")[signing.SIGNATURE] == image[signing.SIGNATURE]

    # A new key and certificate replace the four properties on the same image, no upload.
    puts_before = (signed_cloud.state / "logs" / "glance.log").read_text().count(f"PUT /v2/images/{image['id']}/file")
    new = _run(signed_cloud, "upload", str(disk), "-p", "kvm", "--name", "signed-rsa", "--cloud", "sig", "--json",
               *_sign_args(signed_cloud.ec, "--sign-hash", "SHA-512"))
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout)["images"][0]["status"] == "resigned"
    after = _image("signed-rsa")
    assert after["id"] == image["id"] and after[signing.KEY_TYPE] == "ECC_SECP521R1"
    assert after[signing.CERT_UUID] != image[signing.CERT_UUID]
    assert (signed_cloud.state / "logs" / "glance.log").read_text().count(
        f"PUT /v2/images/{image['id']}/file") == puts_before
    assert _run(signed_cloud, "verify", "signed-rsa", "--cloud", "sig").returncode == 0


def test_ecc_upload_becomes_active(signed_cloud: SignedCloud, sample_raw: Path, tmp_path: Path) -> None:
    proc = _run(signed_cloud, "upload", str(sample_raw), "-p", "kvm-raw", "--name", "signed-ec", "--cloud", "sig",
                *_sign_args(signed_cloud.ec, "--sign-hash", "SHA-384"))
    assert proc.returncode == 0, proc.stderr
    image = _image("signed-ec")
    assert image["status"] == "active" and image[signing.KEY_TYPE] == "ECC_SECP521R1"
    assert image[signing.HASH_METHOD] == "SHA-384"
    assert _run(signed_cloud, "verify", image["id"], "--cloud", "sig").returncode == 0


def test_glance_refuses_a_wrong_signature(signed_cloud: SignedCloud, sample_qcow2: Path, tmp_path: Path) -> None:
    """The signature of other bytes on the image: Glance's own check refuses the upload."""
    other = tmp_path / "other.bin"
    other.write_bytes(b"not the image" * 1000)
    signer = signing.load(signed_cloud.rsa.key, password=PASSWORD, certificate=signed_cloud.rsa.cert)
    from imgpipe.cloud import keymanager

    target = clouds.connect("sig")
    props = signer.properties(keymanager.certificate_id(target, signer), signer.sign(signer.digest(other).value))
    image = glance.create_image(target, {"name": "wrong-signature", "disk_format": "qcow2",
                                         "container_format": "bare", **props})
    try:
        with pytest.raises(Exception, match="HTTP 400"):
            glance.put_data(target, image["id"], sample_qcow2.read_bytes(), "qcow2")
        assert glance.get_image(target, image["id"])["status"] == "queued"
    finally:
        glance.delete_image(target, image["id"])


def test_tampered_upload_is_refused_and_leaves_nothing(signed_cloud: SignedCloud, sample_qcow2: Path,
                                                       tmp_path: Path) -> None:
    """One byte changed in flight (after the signature was made): Glance refuses, imgpipe deletes."""
    glance_url = clouds.connect("sig").endpoint
    host, port = glance_url.split("//")[1].split(":")
    proxy = FaultProxy((host, int(port)), [Fault(r"PUT /v2/images/.*/file", "tamper", after=70000,
                                                 times=10)])
    config = yaml.safe_load(signed_cloud.config.read_text())
    config["clouds"]["sig-proxied"] = dict(config["clouds"]["sig"], image_endpoint_override=proxy.url)
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        proc = _run(signed_cloud, "upload", str(sample_qcow2), "-p", "kvm", "--name", "tampered", "--cloud",
                    "sig-proxied", "--retries", "2", *_sign_args(signed_cloud.rsa), config=path)
    finally:
        proxy.close()
    assert proc.returncode == EXIT_CODES[GlanceRefusedError], proc.stderr
    assert "HTTP 400" in proc.stderr, proc.stderr
    assert any(f.fired for f in proxy.faults)
    target = clouds.connect("sig")
    assert glance.list_images(target, {"name": "tampered"}) == []


def test_verify_fails_a_tampered_image_and_an_untrusted_certificate(signed_cloud: SignedCloud, tmp_path: Path,
                                                                     sample_qcow2: Path) -> None:
    disk = _copy(sample_qcow2, tmp_path / "v.qcow2")
    proc = _run(signed_cloud, "upload", str(disk), "-p", "kvm", "--name", "to-tamper", "--cloud", "sig",
                *_sign_args(signed_cloud.rsa))
    assert proc.returncode == 0, proc.stderr
    image = _image("to-tamper")
    # Glance does not re-verify properties added later: a signature of other bytes goes through,
    # and only the check at download (nova's, imgpipe verify's) catches it.
    signer = signing.load(signed_cloud.rsa.key, password=PASSWORD, certificate=signed_cloud.rsa.cert)
    other = tmp_path / "other.bin"
    other.write_bytes(b"other bytes")
    target = clouds.connect("sig")
    glance.update_properties(target, image, {signing.SIGNATURE: signer.sign(signer.digest(other).value)})
    bad = _run(signed_cloud, "verify", image["id"], "--cloud", "sig")
    assert bad.returncode == EXIT_CODES[SignatureInvalidError], bad.stderr
    assert "the signature does not match the image data" in bad.stderr

    # An image signed by a certificate that the trusted one did not issue.
    ca = make(tmp_path, "trusted-ca")
    from imgpipe.cloud import keymanager

    trusted_id = keymanager.store_certificate(target, load(ca)[0])
    good = _run(signed_cloud, "verify", "signed-ec", "--cloud", "sig")
    assert good.returncode == 0, good.stderr
    untrusted = _run(signed_cloud, "verify", "signed-ec", "--cloud", "sig", "--trusted-cert-id", trusted_id)
    assert untrusted.returncode == EXIT_CODES[SignatureInvalidError], untrusted.stderr
    assert "Certificate chain building failed" in untrusted.stderr


def test_refused_before_upload(signed_cloud: SignedCloud, sample_qcow2: Path, tmp_path: Path) -> None:
    expired = make(tmp_path, "expired", days=(-30, -2))
    proc = _run(signed_cloud, "upload", str(sample_qcow2), "-p", "kvm", "--name", "never", "--cloud", "sig",
                *_sign_args(expired))
    assert proc.returncode == EXIT_CODES[SigningError] and "expired.crt is valid only from" in proc.stderr
    # A certificate id whose certificate is not the key's: found out from Barbican, before creating anything.
    target = clouds.connect("sig")
    from imgpipe.cloud import keymanager

    ec_id = keymanager.store_certificate(target, load(signed_cloud.ec)[0])
    proc = _run(signed_cloud, "upload", str(sample_qcow2), "-p", "kvm", "--name", "never", "--cloud", "sig",
                "--sign-key", str(signed_cloud.rsa.key), "--sign-cert-id", ec_id)
    assert proc.returncode == EXIT_CODES[SigningError], proc.stderr
    assert "the key is not the one of certificate " + ec_id in proc.stderr
    # The right certificate, stored as text/plain: castellan would hand Glance a str (HTTP 500).
    ref = target.session.post(keymanager.endpoint(target) + "/v1/secrets", json={
        "name": "plain-cert", "secret_type": "certificate", "payload": signed_cloud.rsa.cert.read_text(),
        "payload_content_type": "text/plain"}).json()["secret_ref"]
    proc = _run(signed_cloud, "upload", str(sample_qcow2), "-p", "kvm", "--name", "never", "--cloud", "sig",
                "--sign-key", str(signed_cloud.rsa.key), "--sign-cert-id", ref.rsplit("/", 1)[1])
    assert proc.returncode == EXIT_CODES[KeyManagerError], proc.stderr
    assert "stored as text/plain" in proc.stderr
    assert glance.list_images(target, {"name": "never"}) == []


def test_catalog_sync_signs_for_two_clouds(signed_cloud: SignedCloud, sample_qcow2: Path, tmp_path: Path) -> None:
    from imgpipe.hashing import sha256_file

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"images": [{
        "name": "signed-cat", "profiles": ["kvm"], "clouds": ["sig", "sig2"],
        "signing": {"key": str(signed_cloud.rsa.key), "certificate": str(signed_cloud.rsa.cert)},
        "versions": [{"version": "1", "source": str(sample_qcow2), "sha256": sha256_file(sample_qcow2)}]}]}))
    proc = _run(signed_cloud, "catalog", "sync", str(catalog), "--cache-dir", str(tmp_path / "cache"), "--json")
    assert proc.returncode == 0, proc.stderr
    certs = set()
    for cloud in ("sig", "sig2"):
        [image] = glance.list_images(clouds.connect(cloud), {"imgpipe_catalog_image": "signed-cat"})
        assert image["status"] == "active" and image[signing.KEY_TYPE] == "RSA-PSS"
        certs.add(image[signing.CERT_UUID])
        assert _run(signed_cloud, "verify", image["id"], "--cloud", cloud).returncode == 0
    assert len(certs) == 2  # each project keeps the certificate in its own Barbican secret

    # The catalog's next key: the same images, signed anew without an upload.
    catalog.write_text(catalog.read_text().replace(str(signed_cloud.rsa.key), str(signed_cloud.ec.key))
                       .replace(str(signed_cloud.rsa.cert), str(signed_cloud.ec.cert)))
    again = _run(signed_cloud, "catalog", "sync", str(catalog), "--cache-dir", str(tmp_path / "cache"), "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["summary"]["resigned"] == 2 and report["summary"]["uploaded_bytes"] == 0
    for cloud in ("sig", "sig2"):
        [image] = glance.list_images(clouds.connect(cloud), {"imgpipe_catalog_image": "signed-cat"})
        assert image[signing.KEY_TYPE] == "ECC_SECP521R1"
        assert _run(signed_cloud, "verify", image["id"], "--cloud", cloud).returncode == 0


def test_preview_shows_the_resign_the_sync_makes(signed_cloud: SignedCloud, sample_qcow2: Path,
                                                 tmp_path: Path) -> None:
    """`catalog plan` and `catalog sync --dry-run` show what the sync then does: unchanged under
    the same key, resign under a new key and certificate (which the preview does not store in
    Barbican), and unchanged once the sync has re-signed."""
    from cryptography import x509

    from imgpipe.cloud import keymanager
    from imgpipe.hashing import sha256_file

    catalog, cache = tmp_path / "catalog.yaml", str(tmp_path / "cache")
    catalog.write_text(yaml.safe_dump({"images": [{
        "name": "preview-cat", "profiles": ["kvm"], "clouds": ["sig"],
        "signing": {"key": str(signed_cloud.rsa.key), "certificate": str(signed_cloud.rsa.cert)},
        "versions": [{"version": "1", "source": str(sample_qcow2), "sha256": sha256_file(sample_qcow2)}]}]}))
    assert _run(signed_cloud, "catalog", "sync", str(catalog), "--cache-dir", cache).returncode == 0
    target = clouds.connect("sig")

    def previews() -> list[list[str]]:
        shown = []
        for args in (["plan", str(catalog)], ["sync", str(catalog), "--dry-run", "--cache-dir", cache]):
            proc = _run(signed_cloud, "catalog", *args, "--json")
            assert proc.returncode == 0, proc.stderr
            shown.append([a["action"] for a in json.loads(proc.stdout)["actions"]])
        return shown

    assert previews() == [["unchanged"], ["unchanged"]]
    # A new key and certificate, in no Barbican yet
    new = make(tmp_path, "next-signer", ec.generate_private_key(ec.SECP384R1()))
    catalog.write_text(catalog.read_text().replace(str(signed_cloud.rsa.key), str(new.key))
                       .replace(str(signed_cloud.rsa.cert), str(new.cert)))
    [before] = glance.list_images(target, {"imgpipe_catalog_image": "preview-cat"})
    assert previews() == [["resign"], ["resign"]]
    [after] = glance.list_images(target, {"imgpipe_catalog_image": "preview-cat"})
    assert {k: after[k] for k in signing.PROPERTIES} == {k: before[k] for k in signing.PROPERTIES}
    assert keymanager.find_certificate(target, x509.load_pem_x509_certificate(new.cert.read_bytes())) is None

    synced = _run(signed_cloud, "catalog", "sync", str(catalog), "--cache-dir", cache, "--json")
    assert synced.returncode == 0, synced.stderr
    assert [a["action"] for a in json.loads(synced.stdout)["images"]] == ["resigned"]
    [resigned] = glance.list_images(target, {"imgpipe_catalog_image": "preview-cat"})
    assert resigned["id"] == before["id"] and resigned[signing.KEY_TYPE] == "ECC_SECP384R1"
    assert previews() == [["unchanged"], ["unchanged"]]


def test_publish_verify_signature(signed_cloud: SignedCloud, sample_qcow2: Path, tmp_path: Path) -> None:
    proc = _run(signed_cloud, "publish", str(sample_qcow2), "-p", "kvm", "--name", "pub-signed", "--cloud", "sig",
                "--work-dir", str(tmp_path), "--verify-signature", "--json", *_sign_args(signed_cloud.rsa))
    assert proc.returncode == 0, proc.stderr
    assert _image("pub-signed-kvm")[signing.KEY_TYPE] == "RSA-PSS"


def test_doctor_reports_the_key_manager(signed_cloud: SignedCloud) -> None:
    proc = _run(signed_cloud, "doctor", "--cloud", "sig", "--json")
    assert proc.returncode == 0, proc.stderr
    [check] = [c for c in json.loads(proc.stdout) if c["name"].endswith("key manager")]
    assert check["ok"] and check["data"]["certificates"] is True


def test_barbican_down_is_a_clear_error_and_makes_nothing(signed_cloud: SignedCloud, sample_qcow2: Path,
                                                         tmp_path: Path) -> None:
    """Last in the module: Barbican stays down (the module's cloud stops after it)."""
    from imgpipe_dev import localcloud

    localcloud._kill_service(signed_cloud.state.resolve(), "barbican")
    disk = _copy(sample_qcow2, tmp_path / "down.qcow2")
    proc = _run(signed_cloud, "upload", str(disk), "-p", "kvm", "--name", "barbican-down", "--cloud", "sig",
                "--retries", "2", *_sign_args(make(tmp_path, "fresh")))
    assert proc.returncode == EXIT_CODES[KeyManagerError], proc.stderr
    assert "key manager" in proc.stderr and "not reachable" in proc.stderr
    assert glance.list_images(clouds.connect("sig"), {"name": "barbican-down"}) == []
