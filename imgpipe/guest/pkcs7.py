"""A PKCS#7 SignedData (RFC 2315) read far enough to check its signers: the signed content, the
certificates, and each SignerInfo's authenticated attributes and signature.

`cryptography` loads a SignedData only as a list of certificates (and verifies only S/MIME in
its test support), so the structure is walked here with guest.der; the certificates and every
signature check are `cryptography`'s.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from imgpipe.guest import der

SIGNED_DATA = "1.2.840.113549.1.7.2"
CONTENT_TYPE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
# Digest algorithm OID -> hashlib / cryptography name.
DIGESTS = {"1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.1": "sha256", "2.16.840.1.101.3.4.2.2": "sha384",
           "2.16.840.1.101.3.4.2.3": "sha512"}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_RSA = "1.2.840.113549.1.1."  # rsaEncryption (.1) and shaNWithRSAEncryption: PKCS#1 v1.5
_ECDSA = ("1.2.840.10045.2.1", "1.2.840.10045.4.")  # id-ecPublicKey, ecdsa-with-SHAn


@dataclass(frozen=True)
class SignerInfo:
    issuer: bytes  # the DER Name of the signing certificate's issuer
    serial: int
    digest_algorithm: str  # OID
    signed_attributes: der.Tlv | None  # the [0] IMPLICIT SET, as encoded
    signature_algorithm: str  # OID
    signature: bytes


@dataclass(frozen=True)
class SignedData:
    content_type: str
    content: der.Tlv | None  # the element inside contentInfo's [0] EXPLICIT
    certificates: tuple[x509.Certificate, ...]
    signers: tuple[SignerInfo, ...]

    def certificate_of(self, signer: SignerInfo) -> x509.Certificate | None:
        return next((c for c in self.certificates if c.serial_number == signer.serial
                     and c.issuer.public_bytes() == signer.issuer), None)


def load(blob: bytes) -> SignedData:
    """A ContentInfo holding SignedData; raises der.DerError (or ValueError from a certificate)."""
    outer = der.read(blob).items(der.OID, 0xA0)
    if der.oid(outer[0]) != SIGNED_DATA:
        raise der.DerError(f"content type {der.oid(outer[0])} is not SignedData")
    fields = outer[1].items(der.SEQUENCE)[0].items(der.INTEGER, der.SET, der.SEQUENCE)
    info = fields[2].items(der.OID)
    content = info[1].items(0)[0] if len(info) > 1 and info[1].tag == 0xA0 else None
    certificates: list[x509.Certificate] = []
    signer_set = fields[-1]
    if signer_set.tag != der.SET:
        raise der.DerError(f"no SignerInfos SET at {signer_set.start}")
    for field in fields[3:-1]:
        if field.tag == 0xA0:  # certificates [0] IMPLICIT
            with warnings.catch_warnings():  # cryptography warns on the odd encodings CAs have used, then parses
                warnings.simplefilter("ignore")
                certificates += [x509.load_der_x509_certificate(c.encoded) for c in field.children()
                                 if c.tag == der.SEQUENCE]
    return SignedData(der.oid(info[0]), content, tuple(certificates),
                      tuple(_signer(s) for s in signer_set.children()))


def check(signed: SignedData, signer: SignerInfo) -> str | None:
    """Why `signer` does not sign `signed`'s content (None when it does): the messageDigest
    attribute must be the digest of the content's value, and the signature must verify over
    the DER of the authenticated attributes with the signing certificate's key."""
    digest_name = DIGESTS.get(signer.digest_algorithm)
    if digest_name is None:
        return f"digest algorithm {signer.digest_algorithm} is not one firmware knows"
    if signer.signed_attributes is None or signed.content is None:
        return "no authenticated attributes: the signature does not cover the signed digest"
    try:
        attributes = _attributes(signer.signed_attributes)
    except der.DerError as exc:
        return f"authenticated attributes not readable: {exc}"
    if attributes.get(CONTENT_TYPE) != [signed.content_type]:
        return f"the contentType attribute does not name the signed content ({signed.content_type})"
    expected = hashlib.new(digest_name, signed.content.content).digest()
    given = attributes.get(MESSAGE_DIGEST, [])
    if given != [expected.hex()]:
        shown = given[0][:16] if given else "none"
        return f"messageDigest attribute {shown}.. != {digest_name} of the signed content {expected.hex()[:16]}.."
    certificate = signed.certificate_of(signer)
    if certificate is None:
        return f"the signing certificate (serial {signer.serial:x}) is not in the signature"
    attributes_der = b"\x31" + signer.signed_attributes.encoded[1:]  # signed as a SET, stored [0] IMPLICIT
    algorithm = _HASHES[digest_name]()
    try:
        key = certificate.public_key()
        if isinstance(key, rsa.RSAPublicKey) and signer.signature_algorithm.startswith(_RSA):
            key.verify(signer.signature, attributes_der, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and signer.signature_algorithm.startswith(_ECDSA):
            key.verify(signer.signature, attributes_der, ec.ECDSA(algorithm))
        else:
            return f"signature algorithm {signer.signature_algorithm} with a {type(key).__name__} is not supported"
    except InvalidSignature:
        return "the signature over the authenticated attributes does not verify with the signer's key"
    except (UnsupportedAlgorithm, ValueError) as exc:  # a key cryptography does not know, or a malformed one
        return f"signature not checkable: {exc}"
    return None


def _signer(element: der.Tlv) -> SignerInfo:
    fields = element.items(der.INTEGER, der.SEQUENCE, der.SEQUENCE)
    issuer, serial = fields[1].items(der.SEQUENCE, der.INTEGER)[:2]
    rest = fields[3:]
    attributes = rest.pop(0) if rest and rest[0].tag == 0xA0 else None
    if len(rest) < 2 or rest[0].tag != der.SEQUENCE or rest[1].tag != der.OCTET_STRING:
        raise der.DerError(f"SignerInfo at {element.start} has no signature algorithm and signature")
    return SignerInfo(issuer.encoded, der.integer(serial), der.oid(fields[2].items(der.OID)[0]), attributes,
                      der.oid(rest[0].items(der.OID)[0]), rest[1].content)


def _attributes(element: der.Tlv) -> dict[str, list[str]]:
    """Attribute OID -> its values: OIDs dotted, OCTET STRINGs in hex (all this check compares)."""
    found: dict[str, list[str]] = {}
    for attribute in element.children():
        kind, values = attribute.items(der.OID, der.SET)[:2]
        found.setdefault(der.oid(kind), []).extend(
            der.oid(v) if v.tag == der.OID else v.content.hex() for v in values.children())
    return found
