"""boot-check where the firmware is strict: the machine aarch64, Secure Boot and a vTPM ask for,
then real boots of Debian 12 guests built without emulation (imgpipe_dev.strict_guests): an arm64
guest under qemu-system-aarch64, Debian's signed shim/GRUB/kernel with Secure Boot enforced and a
TPM, and the same guest with its unsigned loader refused and, forced, ended on "Access Denied"."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from imgpipe import profiles
from imgpipe.boot import firmware
from imgpipe.boot.machine import machine_for

IMGPIPE = [sys.executable, "-m", "imgpipe.cli"]
BUILTIN = profiles.load_all()


def _argv(properties: dict[str, str], tmp: Path) -> list[str]:
    machine = machine_for(properties)
    return machine.argv(tmp / "d.qcow2", "qcow2", tmp / "s.log", tmp / "VARS.fd", tmp / "fw.log",
                        config_drive=tmp / "cd.iso", tpm_socket=tmp / "swtpm.sock")


def test_aarch64_boots_virt_with_aavmf_and_a_scsi_cdrom(tmp_path: Path) -> None:
    argv = _argv({**BUILTIN["kvm"].properties, "architecture": "aarch64", "hw_machine_type": "virt"}, tmp_path)
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "virt" and argv[argv.index("-cpu") + 1] == "cortex-a57"
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={firmware.AAVMF / 'AAVMF_CODE.fd'}" in argv
    assert "virtio-blk-pci,drive=d0" in argv and "scsi-cd,drive=cd0,bus=scsi1.0" in argv
    assert "-debugcon" not in argv  # the virt machine has no ISA debug port
    machine = machine_for({"architecture": "aarch64"})
    assert machine.firmware.value == "uefi" and not machine.kvm
    for bank in (machine.platform.code, machine.platform.vars_template):
        assert bank.stat().st_size == firmware.AAVMF_BANK  # QEMU refuses any other pflash size on virt


def test_secure_boot_is_q35_smm_secboot_code_and_microsoft_keys(tmp_path: Path) -> None:
    argv = _argv(dict(BUILTIN["kvm-secureboot"].properties), tmp_path)
    assert argv[0] == "qemu-system-x86_64" and argv[argv.index("-machine") + 1] == "q35,smm=on"
    assert ["-global", "driver=cfi.pflash01,property=secure,value=on"] == argv[3:5]
    assert f"file={firmware.OVMF / 'OVMF_CODE_4M.secboot.fd'}" in " ".join(argv)
    assert machine_for(BUILTIN["kvm-secureboot"].properties).platform.vars_template.name == "OVMF_VARS_4M.ms.fd"
    assert "ide-cd,drive=cd0,bus=ahci1.0" in argv  # nova: a q35 machine's cdrom is on sata


@pytest.mark.parametrize(("properties", "device"), [
    ({"hw_tpm_version": "2.0", "hw_tpm_model": "tpm-crb"}, "tpm-crb,tpmdev=tpm0"),
    ({"hw_tpm_version": "2.0"}, "tpm-tis,tpmdev=tpm0"),  # nova's default model
    ({"hw_tpm_version": "2.0", "architecture": "aarch64"}, "tpm-tis-device,tpmdev=tpm0"),
])
def test_vtpm_is_an_swtpm_socket_and_the_model_asked_for(tmp_path: Path, properties: dict[str, str],
                                                         device: str) -> None:
    argv = _argv(properties, tmp_path)
    assert f"socket,id=chrtpm,path={tmp_path / 'swtpm.sock'}" in argv and device in argv
    assert "-tpmdev" not in _argv({}, tmp_path)


def _imgpipe(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMGPIPE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def strict_guests() -> dict[str, Path]:
    if os.geteuid() != 0 or not shutil.which("mmdebstrap") or not shutil.which("qemu-system-aarch64"):
        pytest.skip("building the strict guests needs root, mmdebstrap and qemu-system-arm (make deps)")
    from imgpipe_dev import debian_guest, strict_guests

    return {"arm64": strict_guests.cached("arm64"), "signed": strict_guests.cached("signed"),
            "unsigned": debian_guest.cached("uefi")}


@pytest.fixture(scope="module")
def strict_boots(strict_guests: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """The module's three boots, two at a time (one per core) in the background while the tests check
    what needs no boot: the long aarch64 boot beside the Secure Boot one, then the refused loader."""
    out = tmp_path_factory.mktemp("strict-boots")
    proc = _imgpipe("convert", str(strict_guests["arm64"]), "-p", "kvm", "--output-dir", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    arm64 = Path(json.loads(proc.stdout)[0]["path"])
    # The kernel starting its init proves firmware -> shim -> GRUB -> signed kernel under enforcement,
    # and comes after its Secure Boot and TPM lines; systemd to login: would add 2-3 min under TCG.
    runs = {"arm64": ("boot-check", str(arm64), "-p", "kvm", "--json", "--timeout", "240"),
            "signed": ("boot-check", str(strict_guests["signed"]), "-p", "kvm-secureboot", "--json", "--timeout",
                       "300", "--expect", "Run /init as init process", "--property", "hw_tpm_version=2.0",
                       "--property", "hw_tpm_model=tpm-crb", "--log", str(out / "signed.log")),
            "unsigned": ("boot-check", str(strict_guests["unsigned"]), "-p", "kvm-secureboot", "--timeout", "300",
                         "--log", str(out / "unsigned.log"))}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="strict-boot") as pool:
        yield {name: pool.submit(_imgpipe, *argv) for name, argv in runs.items()}


@pytest.mark.slow
def test_arm64_guest_converted_for_kvm_boots_under_qemu_system_aarch64(
        strict_guests: dict[str, Path], strict_boots: dict[str, Future[subprocess.CompletedProcess[str]]],
        tmp_path: Path) -> None:
    proc = _imgpipe("convert", str(strict_guests["arm64"]), "-p", "kvm", "-p", "vmware", "--output-dir",
                    str(tmp_path))
    assert proc.returncode == 19 and "the guest is aarch64" in proc.stderr, proc.stderr
    proc = strict_boots["arm64"].result()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["booted"] and result["firmware"] == "uefi"
    log = Path(result["log"]).read_text(errors="replace")
    assert re.search(r"Linux version \S+-arm64", log) and "imgpipe-strict-guest login:" in log


@pytest.mark.slow
def test_signed_chain_boots_with_secure_boot_enforced_and_a_tpm(
        strict_guests: dict[str, Path], strict_boots: dict[str, Future[subprocess.CompletedProcess[str]]]) -> None:
    report = json.loads(_imgpipe("inspect", str(strict_guests["signed"]), "--json", "-p", "kvm").stdout)
    chain = report["guest"]["secure_boot"]["value"]
    assert chain["passes"], chain
    assert [s["trusted_by"] for s in chain["steps"]] == ["Microsoft Corporation UEFI CA 2011",
                                                         "Debian Secure Boot CA", "Debian Secure Boot CA"]
    assert len(chain["steps"][0]["signers"]) == 2  # Debian's shim is signed by both Microsoft UEFI CAs
    proc = strict_boots["signed"].result()
    assert proc.returncode == 0, proc.stderr
    console = Path(json.loads(proc.stdout)["log"]).read_text(errors="replace")
    assert "secureboot: Secure boot enabled" in console and "tpm_crb MSFT0101:00: " in console
    assert "No TPM chip found" not in console


@pytest.mark.slow
def test_unsigned_loader_is_refused_and_forced_ends_on_access_denied(
        strict_guests: dict[str, Path], strict_boots: dict[str, Future[subprocess.CompletedProcess[str]]],
        tmp_path: Path) -> None:
    proc = _imgpipe("convert", str(strict_guests["unsigned"]), "-p", "kvm-secureboot", "--output-dir", str(tmp_path))
    assert proc.returncode == 19, proc.stderr
    assert "os_secure_boot=required, but partition 1 (ESP) EFI/BOOT/BOOTX64.EFI is not signed" in proc.stderr
    proc = strict_boots["unsigned"].result()
    assert proc.returncode == 21, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if line.startswith("imgpipe: error:"))
    assert "Secure Boot refused the boot chain: 'BdsDxe: failed to load Boot" in line and "Access Denied" in line


@pytest.mark.bench
def test_print_strict_boot_times(strict_guests: dict[str, Path], tmp_path: Path) -> None:
    """`make bench`: seconds to the marker, one boot at a time, beside today's plain UEFI boot."""
    cases = (("plain UEFI (OVMF, virtio-blk)", strict_guests["unsigned"], "kvm", ("--property", "hw_firmware_type=uefi")),
             ("aarch64 TCG (AAVMF, cortex-a57)", strict_guests["arm64"], "kvm", ()),
             ("Secure Boot (q35+SMM, OVMF secboot)", strict_guests["signed"], "kvm-secureboot", ()),
             ("Secure Boot + TPM 2.0 crb (swtpm)", strict_guests["signed"], "kvm-secureboot",
              ("--property", "hw_tpm_version=2.0", "--property", "hw_tpm_model=tpm-crb")),
             ("Secure Boot refusing an unsigned loader", strict_guests["unsigned"], "kvm-secureboot", ()))
    for name, disk, profile, extra in cases:
        started = time.monotonic()
        proc = _imgpipe("boot-check", str(disk), "-p", profile, "--json", "--timeout", "400",
                        "--log", str(tmp_path / "boot.log"), *extra)
        got = json.loads(proc.stdout) if proc.returncode == 0 else None
        wall = time.monotonic() - started
        shown = f"{got['seconds']:.0f} s to the marker ({wall:.0f} s wall)" if got else \
            f"exit {proc.returncode} after {wall:.0f} s wall (with inspection)"
        print(f"\nboot-check, {name}: {shown}")
