"""boot-check: which machine each profile's properties ask for, and real boots of a Debian guest.

The real boots use a Debian 12 guest built once by imgpipe_dev.debian_guest (cached under the
imgpipe cache dir) in a BIOS+UEFI hybrid and a UEFI-only layout, converted by `imgpipe convert`
and booted under TCG, two at a time (one per core).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from imgpipe import profiles
from imgpipe.boot import check
from imgpipe.boot import machine as qemu_machine
from imgpipe.boot.check import boot_config_drive, skip_reason
from imgpipe.boot.firmware import Firmware
from imgpipe.boot.machine import machine_for

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
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_machine.OVMF_CODE}" in argv
    assert f"if=pflash,format=raw,unit=1,file={vars_copy}" in argv
    assert "-no-reboot" in argv and f"file:{tmp_path / 'serial.log'}" in argv


# (profile, extra properties, extra -device args, the config drive's -device, cdrom) as nova attaches it
CONFIG_DRIVE_SLOTS = [
    ("kvm", {}, (), "ide-cd,drive=cd0,bus=ide.0,unit=0", True),
    ("kvm", {"hw_disk_bus": "ide"}, (), "ide-cd,drive=cd0,bus=ide.0,unit=1", True),
    ("kvm", {"hw_machine_type": "pc-q35-7.2"}, ("ahci,id=ahci1",), "ide-cd,drive=cd0,bus=ahci1.0", True),
    ("kvm", {"hw_cdrom_bus": "scsi"}, ("virtio-scsi-pci,id=scsi1",), "scsi-cd,drive=cd0,bus=scsi1.0", True),
    ("vmware", {}, (), "ide-cd,drive=cd0,bus=ide.0,unit=0", True),
    ("vmware", {"vmware_adaptertype": "ide"}, (), "ide-cd,drive=cd0,bus=ide.0,unit=1", True),
    ("hyperv", {}, (), "ide-hd,drive=cd0,bus=ahci0.1", False),
    ("hyperv-gen1", {}, (), "ide-hd,drive=cd0,bus=ide.1,unit=0", False),
    ("ironic", {}, (), "virtio-blk-pci,drive=cd0", False),
]


def _config_drive_argv(tmp: Path, profile: str, extra: dict[str, str]) -> tuple[list[str], Path]:
    machine = machine_for({**BUILTIN[profile].properties, **extra})
    disk, iso = tmp / "disk.raw", tmp / "config-2.iso"
    disk.write_bytes(b"\0" * (1 << 20))
    iso.write_bytes(b"\0" * (1 << 20))
    vars_copy = qemu_machine.private_vars(tmp) if machine.firmware is Firmware.uefi else None
    return machine.argv(disk, "raw", tmp / "serial.log", vars_copy, config_drive=iso), iso


@pytest.mark.parametrize(("profile", "extra", "bus", "device", "cdrom"), CONFIG_DRIVE_SLOTS)
def test_config_drive_argv_attaches_it_as_nova_does(tmp_path: Path, profile: str, extra: dict[str, str],
                                                    bus: tuple[str, ...], device: str, cdrom: bool) -> None:
    """libvirt: a cdrom on ide (sata for q35, hw_cdrom_bus wins); VMware: an IDE CD-ROM; Hyper-V: a
    disk; ironic: a disk. Never written: read-only media, or a snapshot for a disk."""
    argv, iso = _config_drive_argv(tmp_path, profile, extra)
    media = "media=cdrom,readonly=on" if cdrom else "snapshot=on"
    at = argv.index(f"file={iso},format=raw,if=none,id=cd0,{media}")
    assert argv[at - 1] == "-drive"
    assert argv[at + 1:at + 1 + 2 * len(bus) + 2] == [*(a for d in bus for a in ("-device", d)), "-device", device]
    assert machine_for({}).argv(tmp_path / "disk.raw", "raw", tmp_path / "s.log", None).count("-drive") == 1


@pytest.mark.skipif(not shutil.which(qemu_machine.QEMU), reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize(("profile", "extra", "bus", "device", "cdrom"), CONFIG_DRIVE_SLOTS)
def test_config_drive_argv_is_a_machine_qemu_starts(tmp_path: Path, profile: str, extra: dict[str, str],
                                                    bus: tuple[str, ...], device: str, cdrom: bool) -> None:
    """qemu itself checks the buses, units and read-only media (-S: it builds the machine, then waits)."""
    argv, _ = _config_drive_argv(tmp_path, profile, extra)
    _qemu_builds_the_machine(argv)


def _qemu_builds_the_machine(argv: list[str]) -> None:
    """qemu with -S builds the machine, then waits: still running after a moment means it took argv."""
    proc = subprocess.Popen([*argv, "-S"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.5)
        exited = proc.poll()
    finally:
        proc.kill()
        output = proc.communicate()[0]
    assert exited is None, output


@pytest.mark.parametrize(("profile", "extra", "nic", "smbios"), [
    ("kvm", {}, "virtio-net-pci", True),
    ("qemu", {}, "virtio-net-pci", True),
    ("kvm", {"hw_vif_model": "e1000"}, "e1000", True),
    ("vmware", {}, "e1000", False),
    ("vmware", {"hw_vif_model": "vmxnet3"}, "vmxnet3", False),
    ("vmware", {"hw_vif_model": "VirtualVmxnet3"}, "vmxnet3", False),
    ("hyperv", {}, "e1000", False),
    ("ironic", {}, "e1000", False),
])
def test_metadata_nic_and_smbios_as_nova_gives_them(tmp_path: Path, profile: str, extra: dict[str, str], nic: str,
                                                   smbios: bool) -> None:
    """The NIC nova's driver gives the target; nova's SMBIOS only where its libvirt driver runs the guest."""
    machine = machine_for({**BUILTIN[profile].properties, **extra})
    link = qemu_machine.MetadataLink("169.254.169.0/24", "guestfwd=tcp:169.254.169.254:80-cmd:true", "u-1")
    argv = machine.argv(tmp_path / "d.raw", "raw", tmp_path / "s.log", tmp_path / "VARS.fd", metadata=link)
    assert argv[argv.index("-netdev") + 1] == ("user,id=n0,net=169.254.169.0/24,restrict=on,"
                                                "guestfwd=tcp:169.254.169.254:80-cmd:true")
    assert argv[argv.index("-device", argv.index("-netdev")) + 1] == f"{nic},netdev=n0"
    assert "-nic" not in argv
    expected = ("type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,version=31.0.0,serial=u-1,"
                "uuid=u-1,family=Virtual Machine")
    assert (argv[argv.index("-smbios") + 1] == expected) if smbios else "-smbios" not in argv


@pytest.mark.skipif(not shutil.which(qemu_machine.QEMU), reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize("profile", ["kvm", "vmware"])
def test_metadata_link_is_a_machine_qemu_starts(tmp_path: Path, profile: str) -> None:
    """qemu parses the user network with the relay's guestfwd (commas doubled), the NIC and the SMBIOS."""
    from imgpipe.boot.metadata_service import GUEST_NETWORK, Server, serving

    machine = machine_for(BUILTIN[profile].properties)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    with serving(Server(uuid="u", hostname="h", public_key="k", user_data=b"")) as service:
        link = qemu_machine.MetadataLink(GUEST_NETWORK, service.guestfwd(), "6a1d2e4c-1f7b-4d5e-9a0b-3c2d1e0f9a8b")
        _qemu_builds_the_machine(machine.argv(disk, "raw", tmp_path / "serial.log", None, metadata=link))


def test_config_drive_for_a_boot_is_nova_shaped_and_prints_the_marker(tmp_path: Path) -> None:
    """Label config-2 (isoinfo), the key ssh-keygen reads, and user data that prints the marker when
    a shell runs it (the console devices swapped for a file)."""
    marker = "imgpipe-0123456789abcdef"
    iso = boot_config_drive(tmp_path / "config-2.iso", marker)
    described = subprocess.run(["isoinfo", "-d", "-i", str(iso)], check=True, capture_output=True, text=True).stdout
    assert "Volume id: config-2" in described
    meta = json.loads(_isoinfo(iso, "/openstack/latest/meta_data.json"))
    assert meta["hostname"] == "imgpipe-boot-check"
    (tmp_path / "key.pub").write_text(meta["public_keys"]["default"] + "\n")
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "key.pub")], check=True, capture_output=True)
    user_data = _isoinfo(iso, "/openstack/latest/user_data")
    assert user_data.startswith(b"#cloud-config\n") and marker.encode() not in user_data
    command = yaml.safe_load(user_data)["runcmd"][0]
    console = tmp_path / "console"
    script = command[2].replace("/dev/ttyS0", str(console)).replace("/dev/console", str(console))
    subprocess.run([*command[:2], script], check=True)
    assert console.read_text() == marker + "\n"


def _isoinfo(iso: Path, path: str) -> bytes:
    return subprocess.run(["isoinfo", "-R", "-x", path, "-i", str(iso)], check=True, capture_output=True).stdout


def test_kvm_only_with_a_hardware_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """kvm_pvm (nested) gives /dev/kvm but hangs a stock guest: only kvm_intel/kvm_amd count."""
    monkeypatch.setattr(qemu_machine, "KVM_MODULES", (tmp_path / "kvm_intel",))
    assert not qemu_machine.kvm_works()
    (tmp_path / "kvm_intel").mkdir()
    assert qemu_machine.kvm_works() == Path("/dev/kvm").exists()


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

# vmware-ova wraps the vmware profile's streamOptimized vmdk: booting the OVA boots both
# (boot-check unpacks the vmdk the descriptor names; it once inspected the .ova as a tar).
HYBRID_PROFILES = ("kvm", "vmware-ova", "vmware-sparse", "hyperv", "hyperv-gen1")


def _imgpipe(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMGPIPE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def debian_guest() -> dict[str, Path]:
    """Both layouts of the cached Debian 12 guest (built on first use, about 2 minutes)."""
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        pytest.skip("building the Debian guest needs root and mmdebstrap (make deps)")
    from imgpipe_dev import debian_guest as builder

    return {layout: builder.cached(layout) for layout in builder.LAYOUTS}


# The kernel banner comes after firmware and GRUB: seconds on an idle machine, past 40 s under a
# load of 15 on two cores. The failing profile of the same publish waits this long too, so it is
# generous for a loaded machine but not the 240 s a whole boot gets.
BANNER_TIMEOUT = 120


def _boot(file: Path, profile: str, log: Path, *extra: str,
          output: tuple[str, ...] = ("--json",)) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = _imgpipe("boot-check", str(file), "-p", profile, *output, "--timeout", "240", "--log", str(log), *extra)
    return proc, time.monotonic() - started


# Every CLI boot of this module is a job of one pool, started when the first test that needs one
# runs: a lone boot, a guest waiting out cloud-init's polling, the publish test's guest hung in SeaBIOS
# and the conversions then overlap other boots instead of leaving a core idle; each test still asserts
# on its own boots. Two boots at a time (one per core), as the boots have always run: more at once
# starve a TCG guest's early timer check on a loaded machine ("IO-APIC + timer doesn't work!").
BOOT_WORKERS = 2
CLOUD_INIT_TESTS = {"test_config_drive_user_data_runs_on_a_cloud_init_guest",
                    "test_config_drive_fails_when_cloud_init_asks_only_ec2",
                    "test_metadata_service_user_data_runs_for_the_stock_list_and_ec2_alone",
                    "test_metadata_service_fails_when_cloud_init_asks_only_config_drive"}


class Boots:
    """The module's boot-check runs, by name: started in the background, awaited by their tests."""

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.pool = ThreadPoolExecutor(max_workers=BOOT_WORKERS, thread_name_prefix="boot")
        self.runs: dict[str, Future[tuple[subprocess.CompletedProcess[str], float]]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, test: str, name: str, file: Path, profile: str, *extra: str,
              output: tuple[str, ...] = ("--json",)) -> None:
        """Boots `file` as `profile` if `test` was selected; the serial log is NAME.log beside it (one
        file may boot in several runs at once)."""
        if test in self.wanted:
            self.logs[name] = file.with_name(f"{name}.log")
            self.runs[name] = self.pool.submit(_boot, file, profile, self.logs[name], *extra, output=output)

    def __getitem__(self, name: str) -> tuple[subprocess.CompletedProcess[str], float]:
        return self.runs[name].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def boots(request: pytest.FixtureRequest, debian_guest: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boots]:
    """Starts the boots of the tests selected in this module (all of them in `make test`)."""
    wanted = {item.originalname for item in request.session.items
              if isinstance(item, pytest.Function) and item.module is request.module}
    pool = Boots(wanted)
    try:
        if wanted & CLOUD_INIT_TESTS:  # first: the Ec2-only guest waits out cloud-init's 120 s for a metadata service
            outputs = _convert_cloud_init_outputs(debian_guest, tmp_path_factory.mktemp("cloud-init-outputs"))
            pool.start("test_config_drive_fails_when_cloud_init_asks_only_ec2", "config-drive-ec2", outputs["ec2"],
                       "kvm", "--config-drive", "--timeout", str(METADATA_TIMEOUT))
            pool.start("test_config_drive_user_data_runs_on_a_cloud_init_guest", "config-drive-stock",
                       outputs["stock"], "kvm", "--config-drive", "--timeout", str(METADATA_TIMEOUT))
            for name in ("stock", "ec2", "configdrive"):
                test = ("test_metadata_service_fails_when_cloud_init_asks_only_config_drive" if name == "configdrive"
                        else "test_metadata_service_user_data_runs_for_the_stock_list_and_ec2_alone")
                pool.start(test, f"metadata-{name}", outputs[name], "kvm", "--metadata-service", "--timeout",
                           str(METADATA_TIMEOUT))
        if wanted & {"test_every_qemu_bootable_output_boots", "test_uefi_only_disk_under_bios_fails_with_the_log_tail"}:
            converted = _convert_boot_outputs(debian_guest, tmp_path_factory.mktemp("boot-outputs"))
            pool.start("test_uefi_only_disk_under_bios_fails_with_the_log_tail", "uefi-under-bios",
                       converted["uefi-kvm"], "kvm", "--firmware", "bios", "--timeout", "15",
                       output=())  # the log's tail on stderr: --json leaves it out
            for profile in HYBRID_PROFILES:
                pool.start("test_every_qemu_bootable_output_boots", profile, converted[profile], profile)
            pool.start("test_every_qemu_bootable_output_boots", "uefi-kvm", converted["uefi-kvm"], "kvm")
        yield pool
    finally:
        pool.close()


def _convert_boot_outputs(debian_guest: dict[str, Path], out: Path) -> dict[str, Path]:
    """`imgpipe convert` outputs: profile -> file for the hybrid guest, 'uefi-kvm' for the other."""
    files: dict[str, Path] = {}
    for layout, selected, prefix in (("hybrid", HYBRID_PROFILES, ""), ("uefi", ("kvm",), "uefi-")):
        (out / layout).mkdir()
        proc = _imgpipe("convert", str(debian_guest[layout]), *[a for p in selected for a in ("-p", p)],
                        "--output-dir", str(out / layout), "--json")
        assert proc.returncode == 0, proc.stderr
        for item in json.loads(proc.stdout):
            files.update({prefix + p: Path(item["path"]) for p in item["profiles"]})
    return files


@pytest.mark.slow
def test_publish_uploads_only_what_boots(boots: Boots, glance, debian_guest: dict[str, Path], tmp_path: Path) -> None:
    """The UEFI-only guest as kvm with hw_firmware_type=uefi boots and is active; as qemu with
    bios (a user property wins over anything derived) it hangs in SeaBIOS and uploads nothing.
    The kernel's banner is the marker: it proves firmware, loader and kernel in a third of a boot.
    First of the real boots: the module's boots start before it, and run while its qemu waits in SeaBIOS."""
    from imgpipe.cloud import clouds
    from imgpipe.cloud import glance as glance_api
    from imgpipe.conversion.convert import Options
    from imgpipe.pipeline.publish import BootCheck, PublishRequest, publish

    cloud = clouds.connect("test")
    req = PublishRequest(source=debian_guest["uefi"], profiles=profiles.select(["kvm", "qemu"], BUILTIN),
                         name="bootcheck",
                         profile_properties={"kvm": {"hw_firmware_type": "uefi"},
                                             "qemu": {"hw_firmware_type": "bios"}},
                         boot_check=BootCheck(tmp_path, expect=r"Linux version \d", timeout=BANNER_TIMEOUT))
    report = publish(req, [cloud], Options(out_dir=tmp_path))
    assert [r.profile for r in report.results] == ["kvm"]
    assert [i["status"] for i in glance_api.list_images(cloud, {"name": "bootcheck-kvm"})] == ["active"]
    assert len(report.failures) == 1 and "did not boot as qemu (bios" in report.failures[0]
    assert glance_api.list_images(cloud, {"name": "bootcheck-qemu"}) == []
    assert (tmp_path / "bootcheck-qemu.boot.log").exists()


@pytest.mark.slow
def test_every_qemu_bootable_output_boots(boots: Boots) -> None:
    """kvm/virtio, vmware/LSI (the OVA's stream vmdk and a sparse vmdk), hyperv/AHCI+UEFI (vhdx),
    hyperv-gen1/IDE (vhd) of the hybrid guest, and the UEFI-only guest's kvm output, booted with OVMF because
    boot-check derives hw_firmware_type=uefi from the guest as publish does."""
    report = []
    for name in (*HYBRID_PROFILES, "uefi-kvm"):
        proc, seconds = boots[name]
        profile = name.removeprefix("uefi-")
        assert proc.returncode == 0, f"{name} as {profile}: {proc.stderr}"
        result = json.loads(proc.stdout)
        assert result["booted"] and result["accel"] in ("tcg", "kvm") and result["profile"] == profile
        assert result["firmware"] == ("uefi" if profile == "hyperv" or name == "uefi-kvm" else "bios")
        report.append(f"{Path(result['path']).name} {profile}: {seconds:.0f} s ({result['firmware']}, "
                      f"{result['controller']})")
    print("\n".join(report))


@pytest.mark.slow
def test_uefi_only_disk_under_bios_fails_with_the_log_tail(boots: Boots) -> None:
    """SeaBIOS hangs at "Booting from Hard Disk..." without an error: the timeout catches it."""
    proc, _ = boots["uefi-under-bios"]
    assert proc.returncode == 21, proc.stderr
    assert "did not boot as kvm (bios, virtio-blk" in proc.stderr
    assert "Booting from Hard Disk" in proc.stderr  # the tail, and the one-line message's last line
    assert boots.logs["uefi-under-bios"].exists()
    assert not _qemu_left(boots.logs["uefi-under-bios"])


def _qemu_left(log: Path) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return str(log) in ps


# --- config drive: cloud-init in the guest takes user data from a nova-style drive ----------------

EC2_ONLY = b"datasource_list: [ Ec2, None ]\n"  # what an image-build element once wrote
CONFIG_DRIVE_ONLY = b"datasource_list: [ ConfigDrive, None ]\n"
# Generous for a loaded machine: a boot that passes ends at the marker, one that fails when
# cloud-init prints its final message.
METADATA_TIMEOUT = 600


def _convert_cloud_init_outputs(debian_guest: dict[str, Path], out: Path) -> dict[str, Path]:
    """kvm outputs of the hybrid guest (cloud-init with Debian's datasource list) and of copies whose
    cloud.cfg.d keeps only Ec2 (converted with a warning: it reaches only the metadata service) or only
    ConfigDrive (converted with img_config_drive=mandatory)."""
    from imgpipe_dev import debian_guest as builder

    sources = {"stock": debian_guest["hybrid"]}
    for name, listed in (("ec2", EC2_ONLY), ("configdrive", CONFIG_DRIVE_ONLY)):
        sources[name] = builder.with_files(debian_guest["hybrid"], out / f"{name}.raw",
                                           {f"/etc/cloud/cloud.cfg.d/99-{name}.cfg": listed})
    files = {}
    for name, source in sources.items():
        (out / name).mkdir()
        proc = _imgpipe("convert", str(source), "-p", "kvm", "--output-dir", str(out / name), "--json")
        assert proc.returncode == 0, proc.stderr
        assert ("[Ec2, None]" in proc.stderr and "reaches OpenStack only through the metadata service"
                in proc.stderr) == (name == "ec2"), proc.stderr
        files[name] = Path(json.loads(proc.stdout)[0]["path"])
        if source.parent == out:
            source.unlink()
    return files


@pytest.mark.slow
def test_config_drive_user_data_runs_on_a_cloud_init_guest(boots: Boots) -> None:
    """The marker only the drive's user data prints is on the console, after cloud-init's final
    stage (where runcmd runs) started; the drive was an IDE cdrom, nova's libvirt default on pc."""
    proc, seconds = boots["config-drive-stock"]
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["booted"] and result["config_drive"] == "libvirt: a cdrom on ide"
    log = Path(result["log"]).read_text(errors="replace")
    marker = re.search(r"imgpipe-[0-9a-f]{16}\b", log)
    assert marker and log.index("running 'modules:final'") < marker.start()
    print(f"kvm with a config drive: {result['seconds']:.0f} s to the marker, {seconds:.0f} s in all")


@pytest.mark.slow
def test_config_drive_fails_when_cloud_init_asks_only_ec2(boots: Boots) -> None:
    """Same guest, datasource_list [ Ec2, None ]: it boots, cloud-init polls 169.254.169.254 for its 120 s,
    falls back to DataSourceNone and finishes, the drive ignored: exit 21 when cloud-init says so (a fixed
    timeout instead would have to outlast a loaded machine's boot to cloud-init)."""
    proc, seconds = boots["config-drive-ec2"]
    assert proc.returncode == 21, proc.stderr
    assert "the config drive's user data never ran" in proc.stderr
    assert "cloud-init finished with DataSourceNone" in proc.stderr
    log = boots.logs["config-drive-ec2"].read_text(errors="replace")
    assert "169.254.169.254" in log and "DataSourceConfigDrive" not in log
    print(f"kvm, Ec2 only, with a config drive: failed after {seconds:.0f} s")


# --- metadata service: cloud-init takes user data from nova's metadata service at 169.254.169.254 ---

@pytest.mark.slow
def test_metadata_service_user_data_runs_for_the_stock_list_and_ec2_alone(boots: Boots) -> None:
    """Debian's list (ds-identify finds OpenStack by nova's SMBIOS) reads the OpenStack tree, [ Ec2, None ]
    the EC2 tree; both print the marker after cloud-init's final stage started, over virtio-net."""
    report = []
    for name, tree in (("stock", "/openstack/"), ("ec2", "/2009-04-04/user-data")):
        proc, seconds = boots[f"metadata-{name}"]
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        result = json.loads(proc.stdout)
        assert result["booted"] and result["metadata_service"] == "virtio-net-pci: libvirt: virtio"
        assert result["user_data_from"].startswith(tree) and result["config_drive"] is None
        log = Path(result["log"]).read_text(errors="replace")
        marker = re.search(r"imgpipe-[0-9a-f]{16}\b", log)
        assert marker and log.index("running 'modules:final'") < marker.start()
        report.append(f"kvm, {name} list, metadata service: {result['seconds']:.0f} s to the marker "
                      f"({result['user_data_from']}), {seconds:.0f} s in all")
    print("\n".join(report))


@pytest.mark.slow
def test_metadata_service_fails_when_cloud_init_asks_only_config_drive(boots: Boots) -> None:
    """[ ConfigDrive, None ]: cloud-init runs to its end with DataSourceNone and never asks the service:
    exit 21 as soon as cloud-init says it finished."""
    proc, seconds = boots["metadata-configdrive"]
    assert proc.returncode == 21, proc.stderr
    assert "the metadata service's user data never ran" in proc.stderr
    said = (r"not on the serial console: cloud-init finished with DataSourceNone after \d+ s; the guest never asked "
            r"the metadata service; does cloud-init ask OpenStack or Ec2\?")
    assert re.search(said, proc.stderr), proc.stderr
    print(f"kvm, ConfigDrive only, metadata service: failed after {seconds:.0f} s")


def _writer(serial: Path, program: str) -> list[str]:
    """A stand-in for qemu's serial chardev (a process appending to the log): only the console
    reading is under test, and no guest floods its console on demand."""
    return [sys.executable, "-c", f"import sys, time\nlog = open({str(serial)!r}, 'ab', buffering=0)\n{program}"]


def test_a_marker_split_over_two_reads_is_found(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    argv = _writer(serial, "log.write(b'x' * 100000 + b'debian log')\ntime.sleep(1.5)\n"
                           "log.write(b'in: ')\ntime.sleep(60)")
    _, outcome = check._watch(argv, tmp_path / "qemu.out", serial, re.compile("login:"), 30, threading.Event())
    assert outcome == ""
    assert serial.stat().st_size == 100014


def test_a_flooded_console_stops_the_guest_at_the_cap(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    argv = _writer(serial, "while True:\n    log.write(b'flood ' * 174763)\n    time.sleep(0.02)")
    _, outcome = check._watch(argv, tmp_path / "qemu.out", serial, re.compile("login:"), 120, threading.Event())
    assert outcome.startswith("the serial log passed its 16.0 MiB cap before 'login:' showed"), outcome
    size = serial.stat().st_size
    assert check.LOG_CAP < size < check.LOG_CAP + (64 << 20)  # one poll's worth of writing at most
    shown = check.tail(serial)  # the failure message's tail: from the log's end, not the whole log
    assert "flood flood" in shown and len(shown) <= check.WINDOW
