"""Signing keys and certificates refused before any upload; signatures cursive's verifiers accept.

Local only (no cloud): the signature is checked with the verifier classes Glance and nova use.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from signing_keys import PASSWORD, make

from imgpipe import signing
from imgpipe.errors import SigningError


def _verifies(signer: signing.Signer, path: Path, props: dict[str, str], public_key: object) -> None:
    """cursive's own verifier, fed the file as Glance feeds it the upload."""
    from cursive import signature_utils

    kind = signature_utils.SignatureKeyType.lookup(props[signing.KEY_TYPE])
    verifier = kind.create_verifier(signature_utils.get_signature(props[signing.SIGNATURE]),
                                    signature_utils.get_hash_method(props[signing.HASH_METHOD]), public_key)
    verifier.update(path.read_bytes())
    verifier.verify()


@pytest.mark.parametrize(("key", "hash_method", "key_type"), [
    (lambda: rsa.generate_private_key(65537, 2048), None, "RSA-PSS"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "SHA-384", "ECC_SECP384R1"),
    (lambda: ec.generate_private_key(ec.SECP521R1()), "SHA-512", "ECC_SECP521R1"),
    (lambda: dsa.generate_private_key(2048), "SHA-224", "DSA"),
])
def test_signature_verifies_with_cursive(tmp_path: Path, key, hash_method: str | None, key_type: str) -> None:
    pair = make(tmp_path, "k", key())
    data = tmp_path / "disk.img"
    data.write_bytes(bytes(range(256)) * 5000)
    signer = signing.load(pair.key, password=PASSWORD, certificate=pair.cert, hash_method=hash_method)
    digest = signer.digest(data)
    assert digest.sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    props = signer.properties("cert-uuid", signer.sign(digest.value))
    assert props[signing.KEY_TYPE] == key_type and props[signing.HASH_METHOD] == (hash_method or "SHA-256")
    assert isinstance(props[signing.SIGNATURE], str) and base64.b64decode(props[signing.SIGNATURE])
    from imgpipe.signing import load_certificate

    _verifies(signer, data, props, load_certificate(pair.cert).public_key())
    data.write_bytes(data.read_bytes()[:-1] + b"!")  # one byte changed: a new digest, which no longer verifies
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        _verifies(signer, data, props, load_certificate(pair.cert).public_key())


def test_key_not_matching_certificate(tmp_path: Path) -> None:
    mine, other = make(tmp_path, "mine"), make(tmp_path, "other")
    with pytest.raises(SigningError, match=r"mine.key: the key is not the one of certificate .*other.crt"):
        signing.load(mine.key, password=PASSWORD, certificate=other.cert)


@pytest.mark.parametrize("days", [(-30, -1), (2, 30)])
def test_certificate_outside_its_dates(tmp_path: Path, days: tuple[int, int]) -> None:
    pair = make(tmp_path, "dated", days=days)
    with pytest.raises(SigningError, match=r"is valid only from .* UTC"):
        signing.load(pair.key, password=PASSWORD, certificate=pair.cert)


def test_certificate_without_digital_signature(tmp_path: Path) -> None:
    pair = make(tmp_path, "nosig", digital_signature=False)
    with pytest.raises(SigningError, match="does not allow digitalSignature"):
        signing.load(pair.key, password=PASSWORD, certificate=pair.cert)


def test_unsupported_curve(tmp_path: Path) -> None:
    pair = make(tmp_path, "p256", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(SigningError, match="elliptic curve secp256r1 cannot sign images"):
        signing.load(pair.key, password=PASSWORD, certificate=pair.cert)


def test_password_problems_never_show_the_password(tmp_path: Path) -> None:
    pair = make(tmp_path, "pw")
    with pytest.raises(SigningError, match="needs a password") as missing:
        signing.load(pair.key, certificate=pair.cert)
    with pytest.raises(SigningError, match="password is wrong") as wrong:
        signing.load(pair.key, password=b"Not-The-Password-42", certificate=pair.cert)
    for exc in (missing.value, wrong.value):
        assert "Not-The-Password-42" not in str(exc) and PASSWORD.decode() not in str(exc)
        assert "PRIVATE KEY" not in str(exc)
    plain = tmp_path / "plain.key"
    key = rsa.generate_private_key(65537, 2048)
    plain.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(SigningError, match="takes no password"):
        signing.load(plain, password=b"x", certificate=pair.cert)


def test_password_from_file_or_environment(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_bytes(PASSWORD + b"\n")
    assert signing.read_password(file, {}) == PASSWORD
    assert signing.read_password(None, {signing.PASSWORD_ENV: "from-env"}) == b"from-env"
    assert signing.read_password(None, {}) is None
