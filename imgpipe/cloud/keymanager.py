"""The only code that speaks to the cloud's key manager (Barbican v1), for signing certificates.

Plain REST through the cloud's keystoneauth session (the user's token, the catalog's
`key-manager` endpoint) rather than castellan or barbicanclient: three calls do, and
castellan would need an oslo.config setup of its own. Certificates are stored the way
Glance's castellan reads them: secret_type certificate, the PEM as application/octet-stream
(base64 on the wire); stored as text/plain, castellan hands Glance a str and the upload
fails with HTTP 500.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import requests
from cryptography import x509
from keystoneauth1 import adapter, identity
from keystoneauth1 import exceptions as ksa_exc

from imgpipe import signing
from imgpipe.cloud.clouds import Cloud
from imgpipe.errors import AuthError, KeyManagerError
from imgpipe.retry import RETRY_STATUS, Transient

SERVICE_TYPE = "key-manager"
NAME_PREFIX = "imgpipe-cert-"


def endpoint(cloud: Cloud) -> str:
    """The key manager's URL from the catalog; KeyManagerError when the cloud has none."""

    def find() -> str:
        if not isinstance(cloud.session.auth, identity.BaseIdentityPlugin):
            # auth_type none answers any service type with its one endpoint (Glance's)
            raise KeyManagerError(f"cloud {cloud.name}: no key manager: no Keystone catalog without Keystone auth")
        try:
            url = cloud.session.get_endpoint(service_type=SERVICE_TYPE, interface="public")
        except ksa_exc.EndpointNotFound:
            url = None
        except (ksa_exc.ConnectionError, ksa_exc.RetriableConnectionFailure) as exc:
            raise Transient(f"cloud {cloud.name}: catalog: {exc}") from exc
        except ksa_exc.ClientException as exc:  # e.g. auth_type none: no catalog at all
            raise KeyManagerError(f"cloud {cloud.name}: no key manager: {exc}") from exc
        if not url:
            raise KeyManagerError(f"cloud {cloud.name}: no key manager (Barbican) in the catalog; "
                                  "signed images need one (Glance and nova read the certificate there)")
        return str(url).rstrip("/")

    return cloud.learn("key-manager endpoint", lambda: cloud.call("find the key manager", find, KeyManagerError))


def _adapter(cloud: Cloud) -> adapter.Adapter:
    return adapter.Adapter(cloud.session, service_type=SERVICE_TYPE, endpoint_override=endpoint(cloud),
                           connect_retries=0, status_code_retries=0)


def _request(cloud: Cloud, method: str, path: str, what: str, *, ok: Iterable[int] = (200,),
             **kwargs: Any) -> requests.Response:
    """One call, retried on connection failures and 'later' statuses; errors name the cloud."""
    api = _adapter(cloud)
    label = f"cloud {cloud.name}: key manager {endpoint(cloud)}: {what}"

    def once() -> requests.Response:
        try:
            resp: requests.Response = api.request(path, method, raise_exc=False, **kwargs)
        except ksa_exc.Unauthorized as exc:
            raise AuthError(f"cloud {cloud.name}: Keystone refused the credentials (HTTP 401)") from exc
        except (ksa_exc.ConnectionError, ksa_exc.RetriableConnectionFailure) as exc:
            raise Transient(f"not reachable ({type(exc).__name__})") from exc
        if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
            raise Transient(f"HTTP {resp.status_code}")
        if resp.status_code not in ok:
            raise KeyManagerError(f"{label}: HTTP {resp.status_code}: {' '.join(resp.text.split())[:200]}")
        return resp

    return cloud.call(label, once, KeyManagerError)


def get_certificate(cloud: Cloud, secret_id: str) -> x509.Certificate:
    """The certificate in secret secret_id, read as Glance and nova read it."""
    resp = _request(cloud, "GET", f"/v1/secrets/{secret_id}/payload", f"read certificate {secret_id}",
                    ok=(200, 404), headers={"Accept": "application/octet-stream"})
    if resp.status_code == 404:
        raise KeyManagerError(f"cloud {cloud.name}: no secret {secret_id} in the key manager (or not readable "
                              "by this project)")
    try:
        return x509.load_pem_x509_certificate(resp.content)
    except ValueError as exc:
        raise KeyManagerError(f"cloud {cloud.name}: secret {secret_id} does not hold a PEM certificate") from exc


def find_certificate(cloud: Cloud, cert: x509.Certificate) -> str | None:
    """The id of a certificate secret holding exactly cert, or None; stores nothing."""
    listed = _request(cloud, "GET", "/v1/secrets", "list certificates",
                      params={"name": _secret_name(cert), "secret_type": "certificate", "limit": "100"}).json()
    wanted = signing.pem(cert)
    for secret in listed.get("secrets", []):
        secret_id = _uuid(secret["secret_ref"])
        try:
            if signing.pem(get_certificate(cloud, secret_id)) == wanted:
                return secret_id
        except KeyManagerError:
            continue  # a same-named secret that is not our certificate: not reused
    return None


def store_certificate(cloud: Cloud, cert: x509.Certificate) -> str:
    """The id of a certificate secret holding exactly cert: an earlier one if there is one."""
    found = find_certificate(cloud, cert)
    if found is not None:
        return found
    body = {"name": _secret_name(cert), "secret_type": "certificate",
            "payload": base64.b64encode(signing.pem(cert)).decode(),
            "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64"}
    ref = _request(cloud, "POST", "/v1/secrets", "store certificate", ok=(201,), json=body).json()["secret_ref"]
    return _uuid(ref)


def _castellan_readable(cloud: Cloud, secret_id: str) -> None:
    """A secret Glance's and nova's castellan can read as a certificate: type certificate, stored
    as application/octet-stream (as text/plain castellan gets a str and the upload fails with 500)."""
    meta = _request(cloud, "GET", f"/v1/secrets/{secret_id}", f"read secret {secret_id}", ok=(200, 404))
    if meta.status_code == 404:
        raise KeyManagerError(f"cloud {cloud.name}: no secret {secret_id} in the key manager (or not readable "
                              "by this project)")
    body = meta.json()
    stored_as = (body.get("content_types") or {}).get("default")
    if body.get("secret_type") != "certificate" or stored_as != "application/octet-stream":
        raise KeyManagerError(f"cloud {cloud.name}: secret {secret_id} is a {body.get('secret_type')} stored as "
                              f"{stored_as}: Glance and nova read a certificate only from a secret of type "
                              "certificate stored as application/octet-stream (use --sign-cert to store it so)")


def delete_secret(cloud: Cloud, secret_id: str) -> None:
    _request(cloud, "DELETE", f"/v1/secrets/{secret_id}", f"delete secret {secret_id}", ok=(204, 404))


def _secret_name(cert: x509.Certificate) -> str:
    return NAME_PREFIX + signing.fingerprint(cert)[:32]


def _uuid(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]


def certificate_id(cloud: Cloud, signer: signing.Signer) -> str:
    """The Barbican secret id of the signer's certificate on this cloud, checked against the key.

    Learnt once per cloud and run: every image of the run reuses it.
    """

    def resolve() -> str:
        if signer.certificate_id is not None:
            _castellan_readable(cloud, signer.certificate_id)
            signer.check(get_certificate(cloud, signer.certificate_id), f"{signer.certificate_id} (cloud {cloud.name})")
            return signer.certificate_id
        assert signer.certificate is not None
        return store_certificate(cloud, signer.certificate)

    which = signer.certificate_id if signer.certificate is None else signing.fingerprint(signer.certificate)
    return cloud.learn(f"signing certificate {which}", resolve)


def stored_certificate_id(cloud: Cloud, signer: signing.Signer) -> str | None:
    """certificate_id() as a preview asks it, storing nothing: None when the signer's certificate
    file is not in this cloud's key manager yet (a run would store it there)."""
    cert = signer.certificate
    if cert is None:
        return certificate_id(cloud, signer)  # a secret named by id is only read and checked
    return cloud.learn(f"signing certificate {signing.fingerprint(cert)}, looked up",
                       lambda: find_certificate(cloud, cert))


def probe(cloud: Cloud) -> str:
    """Store, read back and delete a throwaway certificate secret, as a signed publish would.

    The certificate is self-signed and made for the probe (EC P-384): no secret is involved.
    """
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgpipe doctor probe")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA384()))
    secret_id = store_certificate(cloud, cert)
    try:
        if signing.pem(get_certificate(cloud, secret_id)) != signing.pem(cert):
            raise KeyManagerError(f"cloud {cloud.name}: the key manager returned another certificate than stored")
    finally:
        delete_secret(cloud, secret_id)
    return endpoint(cloud)
