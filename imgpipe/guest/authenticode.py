"""Who signed a PE image (Authenticode), and whether UEFI firmware or shim would trust it.

The PE Certificate Table is parsed here (guest.pe) rather than by osslsigncode, which stops at
the first of a dual-signed shim's two signatures. The PKCS#7 SignedData of each entry is read
with `cryptography`; each signature's chain is walked by issuer name from its leaf (the one
certificate that issued none of the others) up to the top issuer, the name the firmware's db
(or shim's vendor certificate) must hold. The image digest is not recomputed: this says which
keys a firmware needs, not that the bytes were not altered after signing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from imgpipe.guest import pe

# What the db of Microsoft-keyed firmware holds (OVMF_VARS*.ms.fd, most PCs): third-party loaders
# (shim) chain to the UEFI CAs, Windows' boot manager to the Windows CAs.
MICROSOFT_UEFI_CAS = ("Microsoft Corporation UEFI CA 2011", "Microsoft UEFI CA 2023")
MICROSOFT_WINDOWS_CAS = ("Microsoft Windows Production PCA 2011", "Windows UEFI CA 2023")
MICROSOFT_DB = MICROSOFT_UEFI_CAS + MICROSOFT_WINDOWS_CAS


@dataclass(frozen=True)
class Signature:
    """One Authenticode signature: the signer's name and the names up its chain, leaf first,
    ending with the issuer of the topmost certificate the signature carries."""

    chain: tuple[str, ...]

    @property
    def signer(self) -> str:
        return self.chain[0]

    def chains_to(self, names: tuple[str, ...] | set[str]) -> str | None:
        """The first name of `names` on the chain (a trusted CA may be carried or only named)."""
        return next((n for n in self.chain if n in names), None)


@dataclass(frozen=True)
class Signed:
    signatures: tuple[Signature, ...]
    unreadable: tuple[str, ...] = ()  # entries that are not PKCS#7 or did not parse, and why


def signatures(data: bytes) -> Signed:
    """Every signature in a PE image's Certificate Table; raises pe.PeError for a broken table."""
    image = pe.parse(data)
    found: list[Signature] = []
    unreadable: list[str] = []
    for entry in pe.cert_entries(data, image):
        if not entry.pkcs7:
            unreadable.append(f"WIN_CERTIFICATE at {entry.offset:#x}: revision {entry.revision:#06x}, "
                              f"type {entry.type:#06x} (not PKCS#7 SignedData)")
            continue
        try:
            with warnings.catch_warnings():  # Authenticode blobs are often BER: cryptography warns, then parses
                warnings.simplefilter("ignore")
                certs = pkcs7.load_der_pkcs7_certificates(entry.data)
        except ValueError as exc:
            unreadable.append(f"WIN_CERTIFICATE at {entry.offset:#x}: PKCS#7 not readable: {exc}")
            continue
        if certs:
            found.append(Signature(_chain(certs)))
    return Signed(tuple(found), tuple(unreadable))


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
    got = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(got[0].value) if got else name.rfc4514_string()


def _chain(certs: list[x509.Certificate]) -> tuple[str, ...]:
    subjects = {c.subject for c in certs}
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    leaf = next((c for c in certs if c.subject not in issuers), certs[0])
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
