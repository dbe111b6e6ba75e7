"""Architecture from the guest itself, per-target firmware properties, Secure Boot readiness and
vTPM: the PE/Authenticode reader on made-up signed images, then the real CLI on synthetic disks."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import guest_disks as gd
import pe_fixture as pf
import pytest
from imgpipe_dev import sample_disk
from typer.testing import CliRunner

from imgpipe.cli import app
from imgpipe.errors import GuestRefusedError
from imgpipe.guest import architecture, authenticode, pe, secureboot
from imgpipe.guest.facts import Fact
from imgpipe.guest.policy import nova
from imgpipe.pipeline.prepared import Preparation, prepare
from imgpipe.profiles import load_all

runner = CliRunner()
SHIM_SIGNER = pf.key("Microsoft Windows UEFI Driver Publisher", pf.MS_UEFI_CA_2011)
SHIM_SIGNER_2023 = pf.key("Microsoft UEFI CA 2023 signer", pf.MS_UEFI_CA_2023)
DEBIAN = pf.key(pf.DEBIAN_CA)
GRUB_SIGNER = pf.key("Debian Secure Boot Signer 2022 - grub2", pf.DEBIAN_CA)
KERNEL_SIGNER = pf.key("Debian Secure Boot Signer 2022 - linux", pf.DEBIAN_CA)
STRANGER = pf.key("Someone's own key")
ELF_AARCH64 = sample_disk.ELF_X86_64[:18] + struct.pack("<H", 0xB7) + sample_disk.ELF_X86_64[20:]
PE_AA64 = pf.pe_image(0xAA64)
# Debian ships arm64 kernels as a gzip'd Image: the magic is inside the compressed stream.
ARM64_IMAGE = gzip.compress(b"MZ".ljust(0x38, b"\0") + b"ARM\x64" + bytes(4096))
KERNEL = "boot/vmlinuz-6.1.0-test"


def test_dual_signed_loader_shows_both_chains_and_its_vendor_cert() -> None:
    data = pf.shim((SHIM_SIGNER, SHIM_SIGNER_2023), DEBIAN)
    signed = authenticode.signatures(data)
    assert [s.chain for s in signed.signatures] == [
        ("Microsoft Windows UEFI Driver Publisher", pf.MS_UEFI_CA_2011),
        ("Microsoft UEFI CA 2023 signer", pf.MS_UEFI_CA_2023)]
    assert authenticode.vendor_cert(data) == pf.DEBIAN_CA
    assert authenticode.sbat(data)[1].startswith("shim,4,")
    assert pe.parse(data).architecture == "x86_64"


def test_entries_that_are_not_pkcs7_and_tables_outside_the_file() -> None:
    odd = pf.pe_image(signers=(GRUB_SIGNER,), win_cert=(0x0100, 0x0001))
    signed = authenticode.signatures(odd)
    assert signed.signatures == () and "not PKCS#7 SignedData" in signed.unreadable[0]
    cut = pf.pe_image(signers=(GRUB_SIGNER,))
    with pytest.raises(pe.PeError, match="outside"):
        authenticode.signatures(cut[:-100])
    assert authenticode.signatures(pf.pe_image()).signatures == ()


@pytest.mark.parametrize(("loader", "grub", "kernel", "refused"), [
    (pf.shim((SHIM_SIGNER,), DEBIAN), GRUB_SIGNER, KERNEL_SIGNER, ""),
    (pf.shim((SHIM_SIGNER_2023,), DEBIAN), GRUB_SIGNER, KERNEL_SIGNER, ""),
    (pf.pe_image(), GRUB_SIGNER, KERNEL_SIGNER, "BOOTX64.EFI is not signed"),
    (pf.shim((STRANGER,), DEBIAN), GRUB_SIGNER, KERNEL_SIGNER, "is signed by Someone's own key"),
    (pf.shim((SHIM_SIGNER,), DEBIAN), STRANGER, KERNEL_SIGNER, "shim (Verification failed)"),
    (pf.shim((SHIM_SIGNER,), DEBIAN), GRUB_SIGNER, None, "bad shim signature"),
])
def test_chain_is_judged_step_by_step(loader: bytes, grub: pf.Key, kernel: pf.Key | None, refused: str) -> None:
    kernel_bytes = pf.pe_image(signers=(kernel,) if kernel else ())
    signed = Fact(authenticode.signatures(kernel_bytes), "partition 2 /boot/vmlinuz-6.1.0-test")
    chain = secureboot.judge("ESP EFI/BOOT/BOOTX64.EFI", loader,
                             ("ESP EFI/BOOT/grubx64.efi", pf.pe_image(signers=(grub,))), signed)
    assert chain.passes == (not refused)
    assert refused in chain.refused
    if not refused:
        assert [s.trusted_by for s in chain.steps][1:] == [pf.DEBIAN_CA, pf.DEBIAN_CA]


@pytest.mark.parametrize(("step", "tamper", "refused"), [
    ("grub", "image", "grubx64.efi is signed by Debian Secure Boot Signer 2022 - grub2 <- Debian Secure Boot CA, "
                      "but authenticode digest mismatch: image sha256 "),
    ("grub", "signature", "grubx64.efi is signed by Debian Secure Boot Signer 2022 - grub2 <- Debian Secure Boot "
                          "CA, but the signature over the authenticated attributes does not verify"),
    ("kernel", "attributes", "vmlinuz-6.1.0-test is signed by Debian Secure Boot Signer 2022 - linux <- Debian "
                             "Secure Boot CA, but messageDigest attribute 0000000000000000.. != sha256 of the "
                             "signed content"),
])
def test_a_step_whose_signature_does_not_hold_for_its_bytes_is_refused(step: str, tamper: str, refused: str) -> None:
    grub = pf.pe_image(signers=(GRUB_SIGNER,), tamper=tamper if step == "grub" else "")
    kernel = pf.pe_image(signers=(KERNEL_SIGNER,), tamper=tamper if step == "kernel" else "")
    chain = secureboot.judge("ESP EFI/BOOT/BOOTX64.EFI", pf.shim((SHIM_SIGNER,), DEBIAN),
                             ("ESP EFI/BOOT/grubx64.efi", grub),
                             Fact(authenticode.signatures(kernel), "partition 2 /boot/vmlinuz-6.1.0-test"))
    assert not chain.passes and refused in chain.refused, chain.refused
    assert [s.trusted_by for s in chain.steps][-1] is None


LEVEL = pf.sbat_level(b"sbat,1,2024040900\nshim,4\ngrub,4\n", b"sbat,1,2025051000\nshim,4\ngrub,5\n")
GRUB_SBAT = b"sbat,1,SBAT Version,sbat,1,https://example\ngrub,%d,Free Software Foundation,grub,2.12,https://example\n"


@pytest.mark.parametrize(("sections", "refused"), [
    ({".sbat": GRUB_SBAT % 4}, ""),
    ({".sbat": GRUB_SBAT % 3}, "ESP EFI/BOOT/grubx64.efi is revoked by shim's SBAT level 2024040900 (shim,4 grub,4): "
                               "grub,3 < grub,4: shim refuses it (SBAT, Security Policy Violation)"),
    ({}, "ESP EFI/BOOT/grubx64.efi has no .sbat section, which shim requires of what it loads"),
])
def test_grub_is_held_to_the_sbat_level_shim_applies_by_default(sections: dict[str, bytes], refused: str) -> None:
    kernel = Fact(authenticode.signatures(pf.pe_image(signers=(KERNEL_SIGNER,))), "partition 2 /boot/vmlinuz")
    chain = secureboot.judge("ESP EFI/BOOT/BOOTX64.EFI", pf.shim((SHIM_SIGNER,), DEBIAN, level=LEVEL),
                             ("ESP EFI/BOOT/grubx64.efi", pf.pe_image(signers=(GRUB_SIGNER,), sections=sections)),
                             kernel)
    assert chain.shim is not None and chain.shim["sbat_level"] == "2024040900 (shim,4 grub,4)"
    assert chain.passes == (not refused) and refused in chain.refused, chain.refused
    assert chain.unread == []
    without = secureboot.judge("ESP EFI/BOOT/BOOTX64.EFI", pf.shim((SHIM_SIGNER,), DEBIAN),
                               ("ESP EFI/BOOT/grubx64.efi", pf.pe_image(signers=(GRUB_SIGNER,), sections=sections)),
                               kernel)
    assert without.passes and "shim has no .sbatlevel" in without.unread[0]


def test_kernel_headers_name_their_architecture() -> None:
    assert architecture.kernel(ARM64_IMAGE[:4096]) == ("aarch64", "gzip'd, arm64 Image magic ARM\\x64 at 0x38")
    bz = bytearray(4096)
    bz[0x202:0x206], bz[0x206:0x208], bz[0x236:0x238] = b"HdrS", struct.pack("<H", 0x20F), struct.pack("<H", 1)
    assert architecture.kernel(bytes(bz))[0] == "x86_64"
    ppc = b"\x7fELF\x02\x02\x01".ljust(18, b"\0") + struct.pack(">H", 0x15)
    assert architecture.kernel(ppc)[0] == "ppc64" and architecture.elf(ppc) == ("ppc64", 0x15)


def test_nova_vocabulary_and_tpm_constraints() -> None:
    assert nova.problems({"architecture": "arm64"}) == [
        f"architecture=arm64 is not a value nova accepts ({', '.join(sorted(nova.ARCHITECTURES))}) "
        "(nova names it aarch64)"]
    assert nova.problems({"architecture": "amd64", "hw_tpm_version": "2.0", "hw_tpm_model": "tpm-crb"}) == []
    assert "needs hw_tpm_version=2.0" in nova.problems({"hw_tpm_version": "1.2", "hw_tpm_model": "tpm-crb"})[0]
    assert "without hw_tpm_version" in nova.problems({"hw_tpm_model": "tpm-tis"})[0]
    assert "riscv64" not in nova.ARCHITECTURES  # nova/virt/arch.py has no riscv64: never derived


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("firmware")
    signed_root = {KERNEL: pf.pe_image(signers=(KERNEL_SIGNER,))}
    shim = pf.shim((SHIM_SIGNER, SHIM_SIGNER_2023), DEBIAN)
    variants = {
        "arm64": gd.Guest(loaders={"EFI/BOOT/BOOTAA64.EFI": PE_AA64}, elf=ELF_AARCH64, files={KERNEL: ARM64_IMAGE}),
        "mixed": gd.Guest(loaders={"EFI/BOOT/BOOTAA64.EFI": PE_AA64}),
        "armkernel": gd.Guest(files={KERNEL: ARM64_IMAGE}),
        "signed": gd.Guest(loaders={"EFI/BOOT/BOOTX64.EFI": shim,
                                    "EFI/BOOT/grubx64.efi": pf.pe_image(signers=(GRUB_SIGNER,))},
                           files=signed_root),
        "badgrub": gd.Guest(loaders={"EFI/BOOT/BOOTX64.EFI": shim, "EFI/BOOT/grubx64.efi": pf.pe_image()},
                            files=signed_root),
        "unsigned": gd.Guest(files=signed_root),
        "altered": gd.Guest(loaders={"EFI/BOOT/BOOTX64.EFI": pf.shim((SHIM_SIGNER, SHIM_SIGNER_2023), DEBIAN,
                                                                     tamper="image"),
                                     "EFI/BOOT/grubx64.efi": pf.pe_image(signers=(GRUB_SIGNER,))},
                            files=signed_root),
    }
    return {name: gd.build(base / f"{name}.qcow2", g) for name, g in variants.items()}


def inspect(path: Path, *profiles: str) -> dict:
    args = [a for p in profiles for a in ("-p", p)]
    result = runner.invoke(app, ["inspect", str(path), "--json", *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def derived(report: dict, profile: str) -> dict[str, str]:
    return {k: v["value"] for k, v in report["derived_properties"][profile].items()}


def convert(src: Path, out: Path, *args: str) -> tuple[int, str]:
    out.mkdir(exist_ok=True)
    result = runner.invoke(app, ["convert", str(src), "--output-dir", str(out), *args])
    return result.exit_code, result.stderr


def test_arm64_guest_gets_nova_aarch64_uefi_virt_where_libvirt_boots_it(disks: dict[str, Path]) -> None:
    report = inspect(disks["arm64"], "kvm", "qemu", "lxc", "ironic")
    sources = [f["evidence"] for f in report["guest"]["architecture_sources"]]
    assert sources == ["partition 1 (ESP) EFI/BOOT/BOOTAA64.EFI (PE machine)",
                       "partition 3 /sbin/init (ELF e_machine 0xb7)",
                       "partition 3 /boot/vmlinuz-6.1.0-test (gzip'd, arm64 Image magic ARM\\x64 at 0x38)"]
    for profile in ("kvm", "qemu"):
        got = derived(report, profile)
        assert (got["architecture"], got["hw_firmware_type"], got["hw_machine_type"]) == ("aarch64", "uefi", "virt")
        assert "aarch64 (partition 1 (ESP) EFI/BOOT/BOOTAA64.EFI" in report["derived_properties"][profile][
            "hw_machine_type"]["evidence"]
    for profile in ("lxc", "ironic"):
        assert derived(report, profile)["architecture"] == "aarch64"
        assert "hw_machine_type" not in derived(report, profile)


@pytest.mark.parametrize("profile", ["vmware", "hyperv", "hyperv-gen1", "xen"])
def test_arm64_guest_is_refused_where_nova_runs_only_x86(disks: dict[str, Path], tmp_path: Path,
                                                         profile: str) -> None:
    code, stderr = convert(disks["arm64"], tmp_path / "out", "-p", profile)
    assert code == 19, stderr
    assert f"profile {profile}: the guest is aarch64" in stderr and "runs only x86 guests" in stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_arm64_on_vmware_forced_gets_no_vmware_ostype(disks: dict[str, Path]) -> None:
    assert "vmware_ostype" not in derived(inspect(disks["arm64"], "vmware"), "vmware")


@pytest.mark.parametrize(("disk", "says"), [
    ("mixed", "aarch64 (partition 1 (ESP) EFI/BOOT/BOOTAA64.EFI (PE machine)) but x86_64 (partition 3 /sbin/init"),
    ("armkernel", "x86_64 (partition 3 /sbin/init (ELF e_machine 0x3e)) but aarch64 (partition 3 "
                  "/boot/vmlinuz-6.1.0-test (gzip'd, arm64 Image magic ARM\\x64 at 0x38))"),
])
def test_disagreeing_architectures_are_refused_naming_both(disks: dict[str, Path], tmp_path: Path, disk: str,
                                                           says: str) -> None:
    code, stderr = convert(disks[disk], tmp_path / "out", "-p", "kvm")
    assert code == 19, stderr
    assert f"the guest's architecture disagrees with itself: {says}" in stderr


def test_signed_chain_passes_kvm_secureboot_with_uefi_and_q35(disks: dict[str, Path], tmp_path: Path) -> None:
    report = inspect(disks["signed"], "kvm")
    chain = report["guest"]["secure_boot"]["value"]
    assert chain["passes"] and chain["shim"]["vendor_cert"] == pf.DEBIAN_CA
    assert [s["trusted_by"] for s in chain["steps"]] == [pf.MS_UEFI_CA_2011, pf.DEBIAN_CA, pf.DEBIAN_CA]
    assert chain["steps"][0]["signers"][1].startswith("Microsoft UEFI CA 2023 signer <- Microsoft UEFI CA 2023")
    profile = load_all()["kvm-secureboot"]
    with prepare(disks["signed"], [profile], Preparation(work_dir=tmp_path)) as prepared:
        props = prepared.properties_for(profile)
    assert {k: props[k] for k in ("os_secure_boot", "hw_firmware_type", "hw_machine_type", "architecture")} == {
        "os_secure_boot": "required", "hw_firmware_type": "uefi", "hw_machine_type": "q35", "architecture": "x86_64"}


@pytest.mark.parametrize(("disk", "says"), [
    ("unsigned", "partition 1 (ESP) EFI/BOOT/BOOTX64.EFI is not signed"),
    ("badgrub", "partition 1 (ESP) EFI/BOOT/grubx64.efi is not signed: shim (Verification failed) refuses it"),
    ("altered", "partition 1 (ESP) EFI/BOOT/BOOTX64.EFI is signed by Microsoft Windows UEFI Driver Publisher <- "
                "Microsoft Corporation UEFI CA 2011, but authenticode digest mismatch: image sha256 "),
])
def test_secure_boot_required_for_a_chain_that_fails_is_refused(disks: dict[str, Path], tmp_path: Path, disk: str,
                                                                says: str) -> None:
    code, stderr = convert(disks[disk], tmp_path / "out", "-p", "kvm-secureboot")
    assert code == 19, stderr
    assert f"os_secure_boot=required, but {says}" in stderr
    with pytest.raises(GuestRefusedError, match=re.escape(says)):
        user_asks(disks[disk], tmp_path, "kvm", os_secure_boot="required")
    code, stderr = convert(disks[disk], tmp_path / "forced", "-p", "kvm-secureboot", "--force-boot")
    assert code == 0, stderr


@pytest.mark.parametrize(("given", "says"), [
    ("hw_firmware_type=bios", "os_secure_boot=required needs hw_firmware_type=uefi, not bios"),
    ("hw_machine_type=pc", "needs hw_machine_type=q35 (nova's libvirt driver ignores Secure Boot on pc)"),
    ("hw_tpm_model=tpm-crb", "hw_tpm_model=tpm-crb without hw_tpm_version"),
])
def test_contradicting_properties_are_refused(disks: dict[str, Path], tmp_path: Path, given: str, says: str) -> None:
    key, _, value = given.partition("=")
    with pytest.raises(GuestRefusedError, match=re.escape(says)):
        user_asks(disks["signed"], tmp_path, "kvm-secureboot", **{key: value})


def user_asks(disk: Path, work: Path, profile_name: str, **given: str) -> dict[str, str]:
    """What --property gives (publish, boot-check), through the one preparation every command uses."""
    profile = load_all()[profile_name]
    with prepare(disk, [profile], Preparation(work_dir=work), lambda p: given) as prepared:
        return prepared.properties_for(profile, given)
