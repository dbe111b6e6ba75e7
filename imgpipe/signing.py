"""Image signatures as Glance and nova verify them (cursive): the key, its certificate, the digest.

Glance verifies the bytes against the four img_signature* properties while they arrive, so
the signature exists before the upload starts: it is made over a digest of exactly the file
that is then sent (one read of the file, shared by every cloud). Everything that would make
Glance or nova refuse the image is refused here first, before any upload: a key type no
verifier supports, a key that is not the certificate's, a certificate outside its validity
dates or not allowed to sign (keyUsage without digitalSignature).

The private key and its password live only in a Signer's fields (repr off); messages name
the file, never its content.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa, utils

from imgpipe.errors import SigningError
from imgpipe.hashing import CHUNK

SIGNATURE = "img_signature"
HASH_METHOD = "img_signature_hash_method"
KEY_TYPE = "img_signature_key_type"
CERT_UUID = "img_signature_certificate_uuid"
PROPERTIES = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERT_UUID)
# Glance's names (cursive.signature_utils.HASH_METHODS) -> hashlib's and cryptography's.
HASHES: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "SHA-224": ("sha224", hashes.SHA224),
    "SHA-256": ("sha256", hashes.SHA256),
    "SHA-384": ("sha384", hashes.SHA384),
    "SHA-512": ("sha512", hashes.SHA512),
}
DEFAULT_HASH = "SHA-256"
PASSWORD_ENV = "IMGPIPE_SIGN_KEY_PASSWORD"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey


def _sign_pss(key: Any, digest: bytes, algo: hashes.HashAlgorithm) -> bytes:
    """MGF1 with the same hash and the maximum salt length: all older cryptography verifies."""
    pss = padding.PSS(mgf=padding.MGF1(algo), salt_length=padding.PSS.MAX_LENGTH)
    signed: bytes = key.sign(digest, pss, utils.Prehashed(algo))
    return signed


def _sign_ecdsa(key: Any, digest: bytes, algo: hashes.HashAlgorithm) -> bytes:
    signed: bytes = key.sign(digest, ec.ECDSA(utils.Prehashed(algo)))
    return signed


def _sign_dsa(key: Any, digest: bytes, algo: hashes.HashAlgorithm) -> bytes:
    signed: bytes = key.sign(digest, utils.Prehashed(algo))
    return signed


@dataclass(frozen=True)
class KeyKind:
    """One family of signing keys: which keys it takes, Glance's key type, how it signs."""

    key_type: str
    matches: Callable[[Any], bool]
    sign: Callable[[Any, bytes, hashes.HashAlgorithm], bytes]


# The key types cursive registers with current cryptography (the SECT curves are gone).
KINDS = (
    KeyKind("RSA-PSS", lambda k: isinstance(k, rsa.RSAPrivateKey), _sign_pss),
    KeyKind("ECC_SECP384R1", lambda k: isinstance(k, ec.EllipticCurvePrivateKey)
            and isinstance(k.curve, ec.SECP384R1), _sign_ecdsa),
    KeyKind("ECC_SECP521R1", lambda k: isinstance(k, ec.EllipticCurvePrivateKey)
            and isinstance(k.curve, ec.SECP521R1), _sign_ecdsa),
    KeyKind("DSA", lambda k: isinstance(k, dsa.DSAPrivateKey), _sign_dsa),
)


def _kind(key: Any, path: Path) -> KeyKind:
    for kind in KINDS:
        if kind.matches(key):
            return kind
    if isinstance(key, ec.EllipticCurvePrivateKey):
        what = f"elliptic curve {key.curve.name}"
    else:
        what = f"a {type(key).__name__.lstrip('_').replace('PrivateKey', '')} key"
    raise SigningError(f"{path}: {what} cannot sign images: Glance and nova verify RSA (RSA-PSS), "
                       "EC P-384/P-521 (ECC_SECP384R1/ECC_SECP521R1) and DSA keys")


def read_password(password_file: Path | None, environ: dict[str, str]) -> bytes | None:
    """From a file (first line) or $IMGPIPE_SIGN_KEY_PASSWORD; never a prompt (CI has no terminal)."""
    if password_file is not None:
        try:
            return password_file.read_bytes().splitlines()[0] if password_file.stat().st_size else b""
        except (OSError, IndexError) as exc:
            raise SigningError(f"{password_file}: cannot read the key's password file") from exc
    value = environ.get(PASSWORD_ENV)
    return value.encode() if value else None


def load_certificate(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the certificate: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SigningError(f"{path}: not an X.509 certificate (PEM or DER)") from exc


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class Digest:
    """A file's digest for its signature, and the sha256 the upload lookup needs (same read)."""

    size: int
    mtime_ns: int
    value: bytes
    sha256: str


@dataclass
class Signer:
    """What signs this run's images. Per cloud, the certificate is a Barbican secret: either
    the one named by certificate_id, or `certificate` stored there (and found again later)."""

    key_path: Path
    kind: KeyKind
    hash_method: str
    certificate: x509.Certificate | None = None  # --sign-cert: checked now
    certificate_id: str | None = None  # --sign-cert-id: checked per cloud, before any upload
    _key: Any = field(default=None, repr=False)
    _digests: dict[Path, Digest] = field(default_factory=dict, repr=False)
    _locks: dict[Path, threading.Lock] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def key_type(self) -> str:
        return self.kind.key_type

    def check(self, cert: x509.Certificate, where: str, now: datetime | None = None) -> None:
        """Refuse a certificate Glance or nova would not accept for this key."""
        public = self._key.public_key()
        if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise SigningError(f"{self.key_path}: the key is not the one of certificate {where} "
                               f"({cert.subject.rfc4514_string()})")
        now = now or datetime.now(timezone.utc)
        if now < cert.not_valid_before_utc or now > cert.not_valid_after_utc:
            raise SigningError(f"certificate {where} is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                               f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                               "nova's certificate validation refuses it")
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return  # no keyUsage extension: every use is allowed (RFC 5280 4.2.1.3)
        if not usage.digital_signature:
            raise SigningError(f"certificate {where}: its keyUsage does not allow digitalSignature")

    def digest(self, path: Path) -> Digest:
        """The file's digest (hash_method) and sha256, in one read; once per file and run (the
        clouds uploading one output wait for the one read; different outputs read side by side)."""
        stat = path.stat()
        with self._lock:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            known = self._digests.get(path)
            if known is not None and (known.size, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                return known
            algo = HASHES[self.hash_method][0]
            h = hashlib.new(algo)
            sha = h if algo == "sha256" else hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    if sha is not h:
                        sha.update(chunk)
            known = Digest(stat.st_size, stat.st_mtime_ns, h.digest(), sha.hexdigest())
            self._digests[path] = known
            return known

    def sign(self, digest: bytes) -> str:
        """Base64 text, as Glance stores it (a str: openstacksdk's str(bytes) never verifies)."""
        algo = HASHES[self.hash_method][1]()
        return base64.b64encode(self.kind.sign(self._key, digest, algo)).decode()

    def properties(self, certificate_uuid: str, signature: str) -> dict[str, str]:
        return {SIGNATURE: signature, HASH_METHOD: self.hash_method, KEY_TYPE: self.key_type,
                CERT_UUID: certificate_uuid}

    def same_signer(self, image: dict[str, Any], certificate_uuid: str) -> bool:
        """Whether image already carries a signature by this key and certificate."""
        return all(k in image for k in PROPERTIES) and image[CERT_UUID] == certificate_uuid \
            and image[HASH_METHOD] == self.hash_method and image[KEY_TYPE] == self.key_type


def load(key_path: Path, *, password: bytes | None = None, certificate: Path | None = None,
         certificate_id: str | None = None, hash_method: str | None = None) -> Signer:
    """Read the key (and a local certificate) and refuse now what would not verify later."""
    if (certificate is None) == (certificate_id is None):
        raise SigningError(f"{key_path}: give its certificate, as a file or as a Barbican secret id (one of them)")
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{key_path}: cannot read the signing key: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password) if b"-----BEGIN" in data \
            else serialization.load_der_private_key(data, password)
    except TypeError as exc:
        needs = "needs a password (file or $" + PASSWORD_ENV + ")" if password is None else "takes no password"
        raise SigningError(f"{key_path}: the signing key {needs}") from exc
    except ValueError as exc:
        raise SigningError(f"{key_path}: not a private key, or the password is wrong") from exc
    except UnsupportedAlgorithm as exc:
        raise SigningError(f"{key_path}: unsupported key algorithm") from exc
    if hash_method is not None and hash_method not in HASHES:
        raise SigningError(f"hash method {hash_method}: Glance knows {', '.join(HASHES)}")
    signer = Signer(key_path, _kind(key, key_path), hash_method or DEFAULT_HASH, None, certificate_id, _key=key)
    if certificate is not None:
        cert = load_certificate(certificate)
        signer.check(cert, str(certificate))
        signer.certificate = cert
    return signer
