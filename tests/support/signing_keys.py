"""Signing keys and certificates made with cryptography for the signing tests."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PASSWORD = b"s1gning-Pa55word"


@dataclass(frozen=True)
class KeyPair:
    key: Path  # PEM, encrypted with PASSWORD
    cert: Path  # PEM


def make(where: Path, name: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None, *,
         days: tuple[int, int] = (-1, 30), digital_signature: bool = True,
         issuer: tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] | None = None,
         ca: bool = True) -> KeyPair:
    """A key and its certificate: self-signed CA by default (nova's trust check accepts a
    self-signed certificate that is its own trusted signer), or issued by `issuer`."""
    key = key or rsa.generate_private_key(65537, 2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days[0]))
            .not_valid_after(now + datetime.timedelta(days=days[1]))
            .add_extension(x509.KeyUsage(digital_signature, False, False, False, False, ca, False, False, False),
                           critical=True)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signing_key, hashes.SHA256()))
    pair = KeyPair(where / f"{name}.key", where / f"{name}.crt")
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(PASSWORD)))
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def load(pair: KeyPair) -> tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    key = serialization.load_pem_private_key(pair.key.read_bytes(), PASSWORD)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificate(pair.cert.read_bytes()), key
