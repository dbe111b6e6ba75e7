"""Signed PE images for the Authenticode reader's tests: a PE32+ with chosen sections and a
Certificate Table of PKCS#7 SignedData made with `cryptography`.

The CAs are made here and only *named* like Microsoft's and Debian's: the reader judges chains
by issuer names (what a firmware db entry is matched by), so names are what the tests control.
Real signed binaries (Debian's shim, GRUB, kernel) are read by the slow Secure Boot tests.
"""

from __future__ import annotations

import datetime
import functools
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

MS_UEFI_CA_2011 = "Microsoft Corporation UEFI CA 2011"
MS_UEFI_CA_2023 = "Microsoft UEFI CA 2023"
DEBIAN_CA = "Debian Secure Boot CA"


@dataclass(frozen=True)
class Key:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the issuers' certificates a signature carries


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imgpipe tests")])


@functools.cache
def key(cn: str, issuer: str | None = None) -> Key:
    """A key named `cn`, issued by key(issuer) (self-signed when None)."""
    private = ec.generate_private_key(ec.SECP256R1())
    parent = key(issuer) if issuer else None
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(issuer or cn))
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .sign(parent.key if parent else private, hashes.SHA256()))
    chain = (parent.cert, *parent.chain) if parent else ()
    return Key(cn, private, cert, chain)


def signature(signer: Key, carry_chain: bool = True) -> bytes:
    builder = pkcs7.PKCS7SignatureBuilder().set_data(b"SpcIndirectDataContent stand-in").add_signer(
        signer.cert, signer.key, hashes.SHA256())
    for cert in signer.chain if carry_chain else ():
        builder = builder.add_certificate(cert)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def vendor_cert_section(ca: Key) -> bytes:
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    return struct.pack("<4I", len(der), 0, 16, 16 + len(der)) + der


def pe_image(machine: int = 0x8664, signers: tuple[Key, ...] = (), sections: dict[str, bytes] | None = None,
             win_cert: tuple[int, int] = (0x0200, 0x0002)) -> bytes:
    """A PE32+ image: its sections, then one WIN_CERTIFICATE per signer (8-byte aligned)."""
    sections = {".text": b"\xc3" * 64, **(sections or {})}
    opt_size = 112 + 16 * 8
    pe_at = 0x80
    headers = pe_at + 24 + opt_size + 40 * len(sections)
    at = (headers + 0x1FF) & ~0x1FF
    body = bytearray(at)
    table = bytearray()
    strings = bytearray(4)  # the COFF string table: names longer than 8 bytes are "/offset" into it
    for name, data in sections.items():
        short = name.encode()
        if len(short) > 8:
            short = f"/{len(strings)}".encode()
            strings += name.encode() + b"\0"
        table += short.ljust(8, b"\0") + struct.pack("<IIIIIIHHI", len(data), at, len(data), at, 0, 0, 0, 0, 0)
        body += data.ljust((len(data) + 0x1FF) & ~0x1FF, b"\0")
        at = len(body)
    symbols = len(body)
    struct.pack_into("<I", strings, 0, len(strings))
    body += strings.ljust((len(strings) + 7) & ~7, b"\0")
    certs = bytearray()
    for signer in signers:
        blob = signature(signer)
        entry = struct.pack("<IHH", 8 + len(blob), *win_cert) + blob
        certs += entry.ljust((len(entry) + 7) & ~7, b"\0")
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B)
    struct.pack_into("<I", opt, 108, 16)
    if certs:
        struct.pack_into("<II", opt, 112 + 8 * 4, len(body), len(certs))
    coff = struct.pack("<HHIIIHH", machine, len(sections), 0, symbols, 0, opt_size, 0x22)
    header = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", pe_at)
    header = header.ljust(pe_at, b"\0") + b"PE\0\0" + coff + bytes(opt) + bytes(table)
    body[:len(header)] = header
    return bytes(body + certs)


def shim(signers: tuple[Key, ...], vendor: Key, machine: int = 0x8664) -> bytes:
    return pe_image(machine, signers, {".vendor_cert": vendor_cert_section(vendor),
                                       ".sbat": b"sbat,1,SBAT Version,sbat,1,https://example\nshim,4,UEFI shim,shim,1,"
                                                b"https://example\n\0"})
