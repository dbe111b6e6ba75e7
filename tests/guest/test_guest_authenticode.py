"""Authenticode checked against the bytes (guest.pe's digest ranges, guest.pkcs7, guest.der,
guest.authenticode) on Debian's real signed shim and GRUB (imgpipe_dev.signed_loaders), with
osslsigncode as an independent oracle where it reads the file (it stops at a dual-signed shim);
then the same binaries with one byte changed, and their refusal through the real CLI."""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path

import guest_disks as gd
import pe_fixture as pf
import pytest
from imgpipe_dev import signed_loaders
from typer.testing import CliRunner

from imgpipe.cli import app
from imgpipe.guest import authenticode, der, pe

runner = CliRunner()
MISMATCH = re.compile(r"authenticode digest mismatch: image sha256 [0-9a-f]{16}\.\. != signed ([0-9a-f]{16})\.\.")
KERNEL = "boot/vmlinuz-6.1.0-test"
KERNEL_SIGNER = pf.key("Debian Secure Boot Signer 2022 - linux", pf.DEBIAN_CA)  # named as Debian's, chains by name


@pytest.fixture(scope="module")
def real() -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in signed_loaders.cached().items()}


def _flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)


def test_real_dual_signed_shim_holds_under_both_microsoft_signatures(real: dict[str, bytes]) -> None:
    signed = authenticode.signatures(real["shim"])
    assert signed.unreadable == ()
    assert [s.chain[:2] for s in signed.signatures] == [
        ("Microsoft Windows UEFI Driver Publisher", "Microsoft Corporation UEFI CA 2011"),
        ("Microsoft UEFI CA 2023 signer", "Microsoft UEFI CA 2023")]
    assert [s.problem for s in signed.signatures] == [None, None]  # digest as signed, signature verifies
    assert signed.signatures[0].digest == signed.signatures[1].digest


def test_real_grub_digest_is_the_one_osslsigncode_calculates_and_reads(real: dict[str, bytes], tmp_path: Path) -> None:
    grub = tmp_path / "grubx64.efi"
    grub.write_bytes(real["grub"])
    report = subprocess.run(["osslsigncode", "verify", "-in", str(grub)], capture_output=True, text=True).stdout
    calculated = re.search(r"Calculated message digest\s*:\s*([0-9A-F]+)", report)
    current = re.search(r"Current message digest\s*:\s*([0-9A-F]+)", report)
    assert calculated and current, report
    signed = authenticode.signatures(real["grub"])
    assert [(s.chain, s.problem) for s in signed.signatures] == [
        (("Debian Secure Boot Signer 2022 - grub2", "Debian Secure Boot CA"), None)]
    assert signed.signatures[0].digest == f"sha256 {calculated.group(1).lower()}" == \
        f"sha256 {current.group(1).lower()}"


@pytest.mark.parametrize(("binary", "section"), [("shim", ".text"), ("shim", ".sbat"), ("shim", ".vendor_cert"),
                                                 ("grub", ".text"), ("grub", "mods")])
def test_one_byte_changed_in_a_section_is_a_digest_mismatch(real: dict[str, bytes], binary: str,
                                                            section: str) -> None:
    data = real[binary]
    found = next(s for s in pe.parse(data).sections if s.name == section)
    before = authenticode.signatures(data).signatures[0].digest
    after = authenticode.signatures(_flip(data, found.offset + found.size // 2))
    assert after.signatures
    for signature in after.signatures:
        assert signature.problem is not None and (match := MISMATCH.fullmatch(signature.problem)), signature.problem
        assert before.split()[1].startswith(match.group(1))  # "signed" is the digest the signer saw
        assert signature.digest != before


def test_headers_count_but_checksum_does_not(real: dict[str, bytes]) -> None:
    data = real["shim"]
    image = pe.parse(data)
    stamp = int.from_bytes(data[60:64], "little") + 8  # COFF TimeDateStamp
    assert all(not s.holds for s in authenticode.signatures(_flip(data, stamp)).signatures)
    assert all(s.holds for s in authenticode.signatures(_flip(data, image.checksum_at)).signatures)


def test_damaged_signatures_are_named_never_raised(real: dict[str, bytes]) -> None:
    """Seeded damage anywhere in the shim's two PKCS#7 blobs: each ends as a named problem, an
    unreadable entry, or (a byte the checks do not cover, such as a CA certificate's own
    signature) a signature that still holds; never an exception but pe.PeError."""
    data = real["shim"]
    entries = pe.cert_entries(data, pe.parse(data))
    rng = random.Random(21)
    outcomes = set()
    for _ in range(200):
        entry = rng.choice(entries)
        at = entry.offset + 8 + rng.randrange(len(entry.data))
        signed = authenticode.signatures(_flip(data, at))
        assert len(signed.signatures) + len(signed.unreadable) >= 1
        outcomes |= {"unreadable"} if signed.unreadable else set()
        outcomes |= {"problem" for s in signed.signatures if s.problem}
    assert outcomes == {"unreadable", "problem"}


@pytest.mark.parametrize(("blob", "says"), [
    (b"\x30\x84\xff\xff\xff\xff", "of 4294967295 bytes runs past its end"),
    (b"\x30\x80" * 40, "nested deeper than 32"),
    (b"\x30\x80\x02\x01\x00", "has no end-of-contents"),
    (b"\x04\x80\x00\x00", "indefinite length on a primitive"),
    (b"\x30\x85\x01\x00\x00\x00\x00", "length of 5 bytes"),
    (b"\x1f\x01\x00", "multi-byte tag"),
])
def test_der_reader_stays_inside_what_it_was_given(blob: bytes, says: str) -> None:
    with pytest.raises(der.DerError, match=says):
        der.read(blob)
    with pytest.raises(der.DerError, match="no OBJECT IDENTIFIER"):
        der.oid(der.read(b"\x06\x02\x2a\x86"))  # the last arc never ends


@pytest.fixture(scope="module")
def disks(real: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("authenticode")
    text = next(s for s in pe.parse(real["shim"]).sections if s.name == ".text")
    files = {KERNEL: pf.pe_image(signers=(KERNEL_SIGNER,))}
    return {name: gd.build(base / f"{name}.qcow2", gd.Guest(
        loaders={"EFI/BOOT/BOOTX64.EFI": shim, "EFI/BOOT/grubx64.efi": real["grub"]}, files=files))
        for name, shim in (("real", real["shim"]), ("altered", _flip(real["shim"], text.offset + 4096)))}


def test_real_chain_passes_and_the_altered_shim_is_refused_by_the_cli(disks: dict[str, Path], tmp_path: Path) -> None:
    report = runner.invoke(app, ["inspect", str(disks["real"]), "--json", "-p", "kvm-secureboot"])
    assert report.exit_code == 0, report.stderr
    chain = json.loads(report.stdout)["guest"]["secure_boot"]["value"]
    assert chain["passes"] and chain["unread"] == [], chain
    assert re.fullmatch(r"\d{10} \(shim,\d+ grub,\d+.*\)", chain["shim"]["sbat_level"]), chain["shim"]
    assert [s["trusted_by"] for s in chain["steps"]] == [pf.MS_UEFI_CA_2011, pf.DEBIAN_CA, pf.DEBIAN_CA]
    assert all(c.startswith("holds: image sha256 ") for s in chain["steps"] for c in s["checks"])

    says = ("partition 1 (ESP) EFI/BOOT/BOOTX64.EFI is signed by Microsoft Windows UEFI Driver Publisher <- "
            "Microsoft Corporation UEFI CA 2011 <- Microsoft Corporation Third Party Marketplace Root, but "
            "authenticode digest mismatch: image sha256 ")
    shown = runner.invoke(app, ["inspect", str(disks["altered"])])
    assert shown.exit_code == 0 and "refused: " + says in " ".join(shown.stdout.split()), shown.stdout
    (tmp_path / "out").mkdir()
    refused = runner.invoke(app, ["convert", str(disks["altered"]), "-p", "kvm-secureboot",
                                  "--output-dir", str(tmp_path / "out")])
    assert refused.exit_code == 19, refused.stderr
    assert f"os_secure_boot=required, but {says}" in refused.stderr
    assert list((tmp_path / "out").iterdir()) == []
