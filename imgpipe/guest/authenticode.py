"""Who signed a PE image (Authenticode), and whether UEFI firmware or shim would trust it.

The PE Certificate Table is parsed here (guest.pe) rather than by osslsigncode, which stops at
the first of a dual-signed shim's two signatures. Each entry's PKCS#7 SignedData (guest.pkcs7)
must hold what firmware checks before it looks at any key: the image digest recomputed over the
file (guest.pe's Authenticode ranges) equal to the one in its SpcIndirectDataContent, and the
signer's signature over its authenticated attributes, whose messageDigest covers that content.
Its chain is walked by issuer name from the signing certificate up to the top issuer, the name
the firmware's db (or shim's vendor certificate) must hold: the CA's key itself is not pinned.

cryptography (and guest.pkcs7 with it) loads only when a PE image carries a certificate to read:
a guest without signed loaders, the common kvm convert, never imports it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgpipe.guest import der, pe

if TYPE_CHECKING:
    from cryptography import x509

    from imgpipe.guest import pkcs7

# What the db of Microsoft-keyed firmware holds (OVMF_VARS*.ms.fd, most PCs): third-party loaders
# (shim) chain to the UEFI CAs, Windows' boot manager to the Windows CAs.
MICROSOFT_UEFI_CAS = ("Microsoft Corporation UEFI CA 2011", "Microsoft UEFI CA 2023")
MICROSOFT_WINDOWS_CAS = ("Microsoft Windows Production PCA 2011", "Windows UEFI CA 2023")
MICROSOFT_DB = MICROSOFT_UEFI_CAS + MICROSOFT_WINDOWS_CAS
SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"


@dataclass(frozen=True)
class Signature:
    """One Authenticode signature: the signer's name and the names up its chain, leaf first,
    ending with the issuer of the topmost certificate the signature carries; whether it holds
    for these bytes, and the image digest it was checked against."""

    chain: tuple[str, ...]
    problem: str | None = None  # why firmware would reject these bytes under this signature
    digest: str = ""  # "sha256 <hex>" of the image, as recomputed

    @property
    def signer(self) -> str:
        return self.chain[0]

    @property
    def holds(self) -> bool:
        return self.problem is None

    def chains_to(self, names: tuple[str, ...] | set[str]) -> str | None:
        """The first name of `names` on the chain (a trusted CA may be carried or only named)."""
        return next((n for n in self.chain if n in names), None)


@dataclass(frozen=True)
class Signed:
    signatures: tuple[Signature, ...]
    unreadable: tuple[str, ...] = ()  # entries that are not PKCS#7 or did not parse, and why


def signatures(data: bytes) -> Signed:
    """Every signature in a PE image's Certificate Table, each checked against the bytes; raises
    pe.PeError for a broken table."""
    image = pe.parse(data)
    found: list[Signature] = []
    unreadable: list[str] = []
    digests: dict[str, str] = {}  # the image digest per algorithm, computed once for all signatures
    for entry in pe.cert_entries(data, image):
        where = f"WIN_CERTIFICATE at {entry.offset:#x}"
        if not entry.pkcs7:
            unreadable.append(f"{where}: revision {entry.revision:#06x}, "
                              f"type {entry.type:#06x} (not PKCS#7 SignedData)")
            continue
        from imgpipe.guest import pkcs7  # cryptography: only for an image that carries a signature

        try:
            signed = pkcs7.load(entry.data)
        except ValueError as exc:  # der.DerError, or a certificate cryptography cannot load
            unreadable.append(f"{where}: PKCS#7 not readable: {exc}")
            continue
        if signed.certificates:
            found.append(_signature(data, image, signed, digests))
    return Signed(tuple(found), tuple(unreadable))


def image_digest(data: bytes, image: pe.PeImage, algorithm: str) -> str:
    """The Authenticode digest of a PE image (hex), as firmware recomputes it before it trusts a
    signature: bounded by the file, which the caller has already read under its own limit."""
    digest = hashlib.new(algorithm)
    view = memoryview(data)
    for start, end in pe.authenticode_ranges(data, image):
        digest.update(view[start:end])
    return digest.hexdigest()


def _signature(data: bytes, image: pe.PeImage, signed: pkcs7.SignedData, digests: dict[str, str]) -> Signature:
    from imgpipe.guest import pkcs7

    signer = signed.signers[0] if len(signed.signers) == 1 else None
    certificate = signed.certificate_of(signer) if signer else None
    chain = _chain(list(signed.certificates), certificate)
    if signer is None:
        return Signature(chain, f"{len(signed.signers)} SignerInfos, where Authenticode has exactly one")
    if signed.content_type != SPC_INDIRECT_DATA or signed.content is None:
        return Signature(chain, f"signed content is {signed.content_type}, not SpcIndirectDataContent")
    try:
        algorithm_id, signed_digest = _indirect_digest(signed.content)
    except der.DerError as exc:
        return Signature(chain, f"SpcIndirectDataContent not readable: {exc}")
    algorithm = pkcs7.DIGESTS.get(algorithm_id)
    if algorithm is None:
        return Signature(chain, f"image digest algorithm {algorithm_id} is not one firmware knows")
    if algorithm not in digests:
        try:
            digests[algorithm] = image_digest(data, image, algorithm)
        except pe.PeError as exc:
            return Signature(chain, f"image digest not computable: {exc}")
    computed = digests[algorithm]
    shown = f"{algorithm} {computed}"
    if computed != signed_digest.hex():
        return Signature(chain, f"authenticode digest mismatch: image {algorithm} {computed[:16]}.. != "
                                f"signed {signed_digest.hex()[:16]}..", shown)
    return Signature(chain, pkcs7.check(signed, signer), shown)


def _indirect_digest(content: der.Tlv) -> tuple[str, bytes]:
    """SpcIndirectDataContent ::= SEQUENCE { data, messageDigest DigestInfo }: the algorithm's
    OID and the digest of the image as signed."""
    digest_info = content.items(der.SEQUENCE, der.SEQUENCE)[1].items(der.SEQUENCE, der.OCTET_STRING)
    return der.oid(digest_info[0].items(der.OID)[0]), digest_info[1].content


def vendor_cert(data: bytes) -> str | None:
    """The CA shim trusts besides the firmware's db: its .vendor_cert section (a cert_table of
    sizes and offsets, then the DER certificate)."""
    image = pe.parse(data)
    section = image.section(data, ".vendor_cert")
    if section is None or len(section) < 16:
        return None
    size, offset = int.from_bytes(section[0:4], "little"), int.from_bytes(section[8:12], "little")
    if not size or offset + size > len(section):
        return None
    from cryptography import x509

    try:
        return common_name(x509.load_der_x509_certificate(section[offset:offset + size]).subject)
    except ValueError:
        return None


def sbat(data: bytes) -> list[str]:
    """The component lines of a .sbat section (shim refuses a component below its revocation level)."""
    image = pe.parse(data)
    section = image.section(data, ".sbat")
    if section is None:
        return []
    text = section.split(b"\0", 1)[0].decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.strip()]


def common_name(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    got = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(got[0].value) if got else name.rfc4514_string()


def _chain(certs: list[x509.Certificate], signer: x509.Certificate | None) -> tuple[str, ...]:
    """From the signing certificate (else the one that issued none of the others) up by issuer."""
    subjects = {c.subject for c in certs}
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    leaf = signer or next((c for c in certs if c.subject not in issuers), certs[0])
    by_subject = {c.subject: c for c in certs}
    chain = [common_name(leaf.subject)]
    current, seen = leaf, {leaf.subject}
    while True:
        chain.append(common_name(current.issuer))
        if current.issuer in seen or current.issuer not in subjects:
            break
        seen.add(current.issuer)
        current = by_subject[current.issuer]
    return tuple(dict.fromkeys(chain))
