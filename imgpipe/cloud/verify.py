"""`imgpipe verify`: check a published image the way nova does before it boots it.

nova (nova/image/glance.py, with [glance] verify_glance_signatures) reads the four
img_signature* properties, fetches the certificate from the key manager with the user's
token, optionally validates it against trusted certificates (cursive's certificate_utils:
validity dates, a CA with keyCertSign up the chain, path lengths), and feeds every
downloaded chunk to cursive's verifier. The same cursive code runs here; only the
certificates come through imgpipe's REST client instead of castellan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from imgpipe import signing
from imgpipe.cloud import glance, keymanager, signature
from imgpipe.cloud.clouds import Cloud
from imgpipe.errors import GlanceRefusedError, SignatureInvalidError, ToolMissingError


@dataclass
class Verified:
    cloud: str
    image_id: str
    name: str
    key_type: str
    hash_method: str
    certificate_uuid: str
    size: int
    trusted_by: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find(cloud: Cloud, image: str) -> dict[str, Any]:
    """An image by id, else by name (exactly one)."""
    found = cloud.call(f"get image {image}", lambda: glance.get_image(cloud, image)) \
        if len(image) == 36 and image.count("-") == 4 else None
    if found is not None:
        return found
    named = cloud.call("list images", lambda: glance.list_images(cloud, {"name": image}))
    if len(named) != 1:
        raise GlanceRefusedError(f"cloud {cloud.name}: {len(named)} images named {image!r}; give its id")
    return named[0]


def verify(cloud: Cloud, image_ref: str, trusted: list[str]) -> Verified:
    try:
        from cursive import certificate_utils, signature_utils
        from cursive import exception as cursive_exc
    except ImportError as exc:  # cursive needs Python >= 3.11
        raise ToolMissingError(f"imgpipe verify needs cursive (Python >= 3.11): {exc}") from exc

    image = find(cloud, image_ref)
    label = f"cloud {cloud.name}: image {image['id']}"
    missing = [p for p in signing.PROPERTIES if not image.get(p)]
    if missing:
        raise SignatureInvalidError(f"{label} is not signed (no {', '.join(missing)}): nova refuses to boot it")
    cert_id = str(image[signing.CERT_UUID])
    cert = keymanager.get_certificate(cloud, cert_id)
    try:
        if trusted:
            context = certificate_utils.CertificateVerificationContext(
                [(t, keymanager.get_certificate(cloud, t)) for t in trusted])
            context.update(cert)
            context.verify()
        kind = signature_utils.SignatureKeyType.lookup(image[signing.KEY_TYPE])
        if not isinstance(cert.public_key(), kind.public_key_type):
            raise SignatureInvalidError(f"{label}: certificate {cert_id} holds no {kind.name} key")
        signed = signature_utils.get_signature(image[signing.SIGNATURE])
        hash_method = signature_utils.get_hash_method(image[signing.HASH_METHOD])
    except cursive_exc.SignatureVerificationError as exc:
        raise SignatureInvalidError(f"{label}: {exc}") from exc

    def read() -> tuple[Any, int]:
        """A fresh verifier per attempt: a retried download starts from byte 0."""
        verifier, size = kind.create_verifier(signed, hash_method, cert.public_key()), 0
        for chunk in signature.download(cloud, image["id"]):
            verifier.update(chunk)
            size += len(chunk)
        return verifier, size

    verifier, size = cloud.call(f"download image {image['id']}", read)
    try:
        verifier.verify()
    except InvalidSignature as exc:
        raise SignatureInvalidError(f"{label}: the signature does not match the image data "
                                    f"(certificate {cert_id}): nova refuses to boot it") from exc
    return Verified(cloud.name, image["id"], str(image.get("name")), kind.name, image[signing.HASH_METHOD],
                    cert_id, size, trusted)
