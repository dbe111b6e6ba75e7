"""boot-check: which machine each profile's properties ask for, and real boots of a Debian guest.

The real boots use a Debian 12 guest built once by imgpipe_dev.debian_guest (cached under the
imgpipe cache dir) in a BIOS+UEFI hybrid and a UEFI-only layout, converted by `imgpipe convert`
and booted under TCG, two at a time (one per core).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imgpipe import profiles
from imgpipe.guest import qemu_system
from imgpipe.guest.boot_check import skip_reason
from imgpipe.guest.qemu_system import Firmware, machine_for

IMGPIPE = [sys.executable, "-m", "imgpipe.cli"]
BUILTIN = profiles.load_all()


@pytest.mark.parametrize(("profile", "extra", "firmware", "controller"), [
    ("kvm", {}, "bios", "virtio-blk"),
    ("kvm", {"hw_firmware_type": "uefi"}, "uefi", "virtio-blk"),
    ("kvm", {"hw_disk_bus": "scsi"}, "bios", "virtio-scsi"),
    ("kvm", {"hw_disk_bus": "sata"}, "bios", "ahci"),
    ("kvm", {"hw_disk_bus": "ide"}, "bios", "ide"),
    ("vmware", {}, "bios", "lsi53c895a"),
    ("vmware", {"hw_firmware_type": "uefi"}, "uefi", "ahci"),
    ("vmware", {"vmware_adaptertype": "paraVirtual"}, "bios", "pvscsi"),
    ("vmware", {"vmware_adaptertype": "ide"}, "bios", "ide"),
    ("hyperv", {}, "uefi", "ahci"),
    ("hyperv-gen1", {}, "bios", "ide"),
    ("hyperv-gen1", {"hw_firmware_type": "uefi"}, "bios", "ide"),  # Gen1 has no UEFI
])
def test_machine_from_properties(profile: str, extra: dict[str, str], firmware: str, controller: str) -> None:
    machine = machine_for({**BUILTIN[profile].properties, **extra})
    assert (machine.firmware.value, machine.controller.name) == (firmware, controller)


def test_argv_never_writes_the_image(tmp_path: Path) -> None:
    machine = machine_for({"hw_firmware_type": "uefi"})
    vars_copy = tmp_path / "VARS.fd"
    argv = machine.argv(tmp_path / "disk.vmdk", "vmdk", tmp_path / "serial.log", vars_copy)
    assert f"file={tmp_path / 'disk.vmdk'},format=vmdk,if=none,id=d0,snapshot=on" in argv
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_system.OVMF_CODE}" in argv
    assert f"if=pflash,format=raw,unit=1,file={vars_copy}" in argv
    assert "-no-reboot" in argv and f"file:{tmp_path / 'serial.log'}" in argv


def test_kvm_only_with_a_hardware_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """kvm_pvm (nested) gives /dev/kvm but hangs a stock guest: only kvm_intel/kvm_amd count."""
    monkeypatch.setattr(qemu_system, "KVM_MODULES", (tmp_path / "kvm_intel",))
    assert not qemu_system.kvm_works()
    (tmp_path / "kvm_intel").mkdir()
    assert qemu_system.kvm_works() == Path("/dev/kvm").exists()


@pytest.mark.parametrize(("profile", "reason"), [("xen", "not applicable"), ("docker", "not applicable"),
                                                 ("lxc", "not bootable"), ("uml", "not bootable"), ("kvm", "")])
def test_what_qemu_cannot_boot_is_skipped(profile: str, reason: str) -> None:
    assert reason in skip_reason(BUILTIN[profile])
    assert bool(skip_reason(BUILTIN[profile])) == bool(reason)


def test_skipped_profile_exits_0(tmp_path: Path) -> None:
    (tmp_path / "root.img").write_bytes(b"\0" * 4096)
    proc = _imgpipe("boot-check", str(tmp_path / "root.img"), "-p", "lxc")
    assert proc.returncode == 0, proc.stderr
    assert "not bootable under QEMU" in proc.stderr


# --- real boots -------------------------------------------------------------------------------

HYBRID_PROFILES = ("kvm", "vmware", "vmware-sparse", "hyperv", "hyperv-gen1")


def _imgpipe(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMGPIPE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def debian_guest() -> dict[str, Path]:
    """Both layouts of the cached Debian 12 guest (built on first use, about 2 minutes)."""
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        pytest.skip("building the Debian guest needs root and mmdebstrap (make deps)")
    from imgpipe_dev import debian_guest as builder

    return {layout: builder.cached(layout) for layout in builder.LAYOUTS}


@pytest.fixture(scope="session")
def converted(debian_guest: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`imgpipe convert` outputs: profile -> file for the hybrid guest, 'uefi-kvm' for the other."""
    out = tmp_path_factory.mktemp("boot-outputs")
    files: dict[str, Path] = {}
    for layout, selected, prefix in (("hybrid", HYBRID_PROFILES, ""), ("uefi", ("kvm",), "uefi-")):
        (out / layout).mkdir()
        proc = _imgpipe("convert", str(debian_guest[layout]), *[a for p in selected for a in ("-p", p)],
                        "--output-dir", str(out / layout), "--json")
        assert proc.returncode == 0, proc.stderr
        for item in json.loads(proc.stdout):
            files.update({prefix + p: Path(item["path"]) for p in item["profiles"]})
    return files


def _boot(file: Path, profile: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = _imgpipe("boot-check", str(file), "-p", profile, "--json", "--timeout", "240",
                    "--log", f"{file}.{profile}.log", *extra)
    return proc, time.monotonic() - started


@pytest.mark.slow
def test_every_qemu_bootable_output_boots(converted: dict[str, Path]) -> None:
    """kvm/virtio, vmware/LSI (stream and sparse vmdk), hyperv/AHCI+UEFI (vhdx), hyperv-gen1/IDE
    (vhd) of the hybrid guest, and the UEFI-only guest's kvm output, booted with OVMF because
    boot-check derives hw_firmware_type=uefi from the guest as publish does."""
    runs = [(converted[p], p, ()) for p in HYBRID_PROFILES]
    runs.append((converted["uefi-kvm"], "kvm", ()))
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda r: _boot(r[0], r[1], *r[2]), runs))
    report = []
    for (file, profile, _), (proc, seconds) in zip(runs, done):
        assert proc.returncode == 0, f"{file} as {profile}: {proc.stderr}"
        result = json.loads(proc.stdout)
        assert result["booted"] and result["accel"] in ("tcg", "kvm")
        assert result["firmware"] == ("uefi" if profile == "hyperv" or "uefi" in str(file.parent) else "bios")
        report.append(f"{file.name} {profile}: {seconds:.0f} s ({result['firmware']}, {result['controller']})")
    print("\n".join(report))


@pytest.mark.slow
def test_uefi_only_disk_under_bios_fails_with_the_log_tail(converted: dict[str, Path], tmp_path: Path) -> None:
    """SeaBIOS hangs at "Booting from Hard Disk..." without an error: the timeout catches it."""
    log = tmp_path / "serial.log"
    proc = _imgpipe("boot-check", str(converted["uefi-kvm"]), "-p", "kvm", "--firmware", "bios",
                    "--timeout", "15", "--log", str(log))
    assert proc.returncode == 21, proc.stderr
    assert "did not boot as kvm (bios, virtio-blk" in proc.stderr
    assert "Booting from Hard Disk" in proc.stderr  # the tail, and the one-line message's last line
    assert log.exists()
    assert not _qemu_left(log)


def _qemu_left(log: Path) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return str(log) in ps


@pytest.mark.slow
def test_publish_uploads_only_what_boots(glance, debian_guest: dict[str, Path], tmp_path: Path) -> None:
    """The UEFI-only guest as kvm with hw_firmware_type=uefi boots and is active; as qemu with
    bios (a user property wins over anything derived) it hangs in SeaBIOS and uploads nothing.
    The kernel's banner is the marker: it proves firmware, loader and kernel in a third of a boot."""
    from imgpipe.cloud import clouds
    from imgpipe.cloud import glance as glance_api
    from imgpipe.pipeline.publish import BootCheck, PublishRequest, publish
    from imgpipe.conversion.convert import Options

    cloud = clouds.connect("test")
    req = PublishRequest(debian_guest["uefi"], profiles.select(["kvm", "qemu"], BUILTIN), "bootcheck",
                         profile_properties={"kvm": {"hw_firmware_type": "uefi"},
                                             "qemu": {"hw_firmware_type": "bios"}},
                         boot_check=BootCheck(tmp_path, expect=r"Linux version \d", timeout=40))
    report = publish(req, [cloud], Options(out_dir=tmp_path))
    assert [r.profile for r in report.results] == ["kvm"]
    assert [i["status"] for i in glance_api.list_images(cloud, {"name": "bootcheck-kvm"})] == ["active"]
    assert len(report.failures) == 1 and "did not boot as qemu (bios" in report.failures[0]
    assert glance_api.list_images(cloud, {"name": "bootcheck-qemu"}) == []
    assert (tmp_path / "bootcheck-qemu.boot.log").exists()
