"""Signed PE images for the Authenticode reader's tests: a PE32+ with chosen sections and a
Certificate Table of Authenticode signatures (PKCS#7 SignedData of an SpcIndirectDataContent
holding the image's sha256, signed attributes, an ECDSA signature), encoded here in DER.

The image digest is computed here the simple way (the file in one run, less CheckSum and the
Certificate Table entry), which equals the specification's section-by-section one only because
these images have no gaps: the reader's own computation is checked against it, and against
Debian's real signed shim and GRUB (tests/guest/test_guest_firmware.py).
The CAs are made here and only *named* like Microsoft's and Debian's: the reader judges chains
by issuer names (what a firmware db entry is matched by), so names are what the tests control.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
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


SHA256 = "2.16.840.1.101.3.4.2.1"
SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _set(*items: bytes) -> bytes:
    return _tlv(0x31, b"".join(items))


def signature(signer: Key, image_digest: bytes, carry_chain: bool = True, tamper: str = "") -> bytes:
    """An Authenticode SignedData by `signer` for an image of `image_digest` (sha256). tamper:
    "attributes" makes messageDigest name other content, "signature" flips a signature bit."""
    sha256 = _seq(_oid(SHA256), b"\x05\x00")
    indirect = _seq(_seq(_oid(SPC_PE_IMAGE_DATA), _seq(b"\x03\x01\x00")), _seq(sha256, _tlv(0x04, image_digest)))
    content_digest = hashlib.sha256(indirect[2:]).digest()  # the value, without its tag and length
    if tamper == "attributes":
        content_digest = bytes(32)
    attributes = _seq(_oid("1.2.840.113549.1.9.3"), _set(_oid(SPC_INDIRECT_DATA))) + \
        _seq(_oid("1.2.840.113549.1.9.4"), _set(_tlv(0x04, content_digest)))
    signed = bytearray(signer.key.sign(_set(attributes), ec.ECDSA(hashes.SHA256())))
    if tamper == "signature":
        signed[-1] ^= 1
    signer_info = _seq(_int(1), _seq(signer.cert.issuer.public_bytes(), _int(signer.cert.serial_number)), sha256,
                       _tlv(0xA0, attributes), _seq(_oid(ECDSA_SHA256)), _tlv(0x04, bytes(signed)))
    certs = [signer.cert, *(signer.chain if carry_chain else ())]
    signed_data = _seq(_int(1), _set(sha256), _seq(_oid(SPC_INDIRECT_DATA), _tlv(0xA0, indirect)),
                       _tlv(0xA0, b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)),
                       _set(signer_info))
    return _seq(_oid("1.2.840.113549.1.7.2"), _tlv(0xA0, signed_data))


def image_digest(unsigned: bytes, checksum_at: int, cert_entry_at: int) -> bytes:
    """The Authenticode sha256 of an image without gaps between its headers and sections."""
    return hashlib.sha256(unsigned[:checksum_at] + unsigned[checksum_at + 4:cert_entry_at]
                          + unsigned[cert_entry_at + 8:]).digest()


def vendor_cert_section(ca: Key) -> bytes:
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    return struct.pack("<4I", len(der), 0, 16, 16 + len(der)) + der


def pe_image(machine: int = 0x8664, signers: tuple[Key, ...] = (), sections: dict[str, bytes] | None = None,
             win_cert: tuple[int, int] = (0x0200, 0x0002), tamper: str = "") -> bytes:
    """A PE32+ image: its sections, then one WIN_CERTIFICATE per signer (8-byte aligned).
    tamper: "image" changes a byte of .text after signing; else passed to signature()."""
    sections = {".text": b"\xc3" * 64, **(sections or {})}
    opt_size = 112 + 16 * 8
    pe_at = 0x80
    headers = pe_at + 24 + opt_size + 40 * len(sections)
    at = first_section = (headers + 0x1FF) & ~0x1FF
    body = bytearray(at)
    table = bytearray()
    strings = bytearray(4)  # the COFF string table: names longer than 8 bytes are "/offset" into it
    for name, data in sections.items():
        short = name.encode()
        if len(short) > 8:
            short = f"/{len(strings)}".encode()
            strings += name.encode() + b"\0"
        raw = data.ljust((len(data) + 0x1FF) & ~0x1FF, b"\0")  # SizeOfRawData: FileAlignment multiples, no gaps
        table += short.ljust(8, b"\0") + struct.pack("<IIIIIIHHI", len(data), at, len(raw), at, 0, 0, 0, 0, 0)
        body += raw
        at = len(body)
    symbols = len(body)
    struct.pack_into("<I", strings, 0, len(strings))
    body += strings.ljust((len(strings) + 7) & ~7, b"\0")
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B)
    struct.pack_into("<I", opt, 60, first_section)  # SizeOfHeaders
    struct.pack_into("<I", opt, 108, 16)
    coff = struct.pack("<HHIIIHH", machine, len(sections), 0, symbols, 0, opt_size, 0x22)
    header = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", pe_at)
    header = header.ljust(pe_at, b"\0") + b"PE\0\0" + coff + bytes(opt) + bytes(table)
    body[:len(header)] = header
    optional = pe_at + 24
    digest = image_digest(bytes(body), optional + 64, optional + 112 + 8 * 4)
    certs = bytearray()
    for signer in signers:
        blob = signature(signer, digest, tamper=tamper)
        entry = struct.pack("<IHH", 8 + len(blob), *win_cert) + blob
        certs += entry.ljust((len(entry) + 7) & ~7, b"\0")
    if certs:
        struct.pack_into("<II", body, optional + 112 + 8 * 4, len(body), len(certs))
    if tamper == "image":
        body[first_section] ^= 1
    return bytes(body + certs)


def sbat_level(previous: bytes, latest: bytes) -> bytes:
    """A shim .sbatlevel section: version 0, then the offsets (from after the version) of the
    NUL-terminated "previous" and "latest" SbatLevel payloads."""
    return struct.pack("<III", 0, 8, 8 + len(previous) + 1) + previous + b"\0" + latest + b"\0"


def shim(signers: tuple[Key, ...], vendor: Key, machine: int = 0x8664, tamper: str = "",
         level: bytes | None = None) -> bytes:
    sbat = b"sbat,1,SBAT Version,sbat,1,https://example\nshim,4,UEFI shim,shim,1,https://example\n\0"
    sections = {".vendor_cert": vendor_cert_section(vendor), ".sbat": sbat}
    return pe_image(machine, signers, {**sections, ".sbatlevel": level} if level else sections, tamper=tamper)
