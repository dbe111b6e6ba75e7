"""Signed images on one cloud: the properties an upload carries, and re-signing what is there.

The signature goes on the image when it is created, so Glance verifies the bytes while they
arrive and refuses (HTTP 400) anything else. An image published earlier from the same source
is not uploaded again for a new key or certificate: its four properties are replaced, signed
over the digest of the bytes Glance stores (Glance's own sha512 when that is the hash method,
else a download checked against it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imgpipe import signing
from imgpipe.cloud import glance, keymanager
from imgpipe.cloud.clouds import Cloud
from imgpipe.errors import UploadError
from imgpipe.hashing import CHUNK

LOG = logging.getLogger("imgpipe.cloud.signature")


def for_file(cloud: Cloud, signer: signing.Signer, path: Path) -> tuple[dict[str, str], signing.Digest]:
    """The img_signature* properties for uploading path to cloud, and the digest they sign.

    The file is read while the key manager is asked for the certificate: the two overlap.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sign-digest") as pool:
        reading = pool.submit(signer.digest, path)
        cert_id = keymanager.certificate_id(cloud, signer)
        digest = reading.result()
    return signer.properties(cert_id, signer.sign(digest.value)), digest


def resign(cloud: Cloud, signer: signing.Signer, image: dict[str, Any]) -> dict[str, Any] | None:
    """Give an active image this signer's signature; None when it already carries it."""
    cert_id = keymanager.certificate_id(cloud, signer)
    if signer.same_signer(image, cert_id):
        return None
    digest = stored_digest(cloud, image, signing.HASHES[signer.hash_method][0])
    LOG.info("cloud %s: image %s: replacing its signature properties (no upload)", cloud.name, image["id"])
    return glance.update_properties(cloud, image, signer.properties(cert_id, signer.sign(digest)))


def would_resign(cloud: Cloud, signer: signing.Signer, image: dict[str, Any]) -> bool:
    """Whether resign() would replace image's signature, asked without changing anything (a
    certificate the key manager does not hold yet would be stored, under a new id: a re-sign)."""
    cert_id = keymanager.stored_certificate_id(cloud, signer)
    return cert_id is None or not signer.same_signer(image, cert_id)


def stored_digest(cloud: Cloud, image: dict[str, Any], algo: str) -> bytes:
    """The digest of the bytes Glance serves for image: its own os_hash_value when the
    algorithm is the same, else a download whose sha512 must match os_hash_value."""
    if image.get("os_hash_algo") == algo and image.get("os_hash_value"):
        return bytes.fromhex(str(image["os_hash_value"]))

    def read() -> tuple[Any, Any]:
        wanted, check = hashlib.new(algo), hashlib.new(str(image.get("os_hash_algo") or "sha512"))
        for chunk in download(cloud, image["id"]):
            wanted.update(chunk)
            check.update(chunk)
        return wanted, check

    wanted, check = cloud.call(f"download image {image['id']}", read)
    if image.get("os_hash_value") and check.hexdigest() != image["os_hash_value"]:
        raise UploadError(f"cloud {cloud.name}: image {image['id']}: the downloaded data does not match "
                          f"Glance's {check.name}")
    value: bytes = wanted.digest()
    return value


def download(cloud: Cloud, image_id: str) -> Iterator[bytes]:
    """The image's data as nova reads it: streamed, in 1 MiB chunks."""
    resp = glance.request(cloud, "GET", f"/v2/images/{image_id}/file", f"download image {image_id}", stream=True)
    try:
        yield from resp.iter_content(CHUNK)
    finally:
        resp.close()
