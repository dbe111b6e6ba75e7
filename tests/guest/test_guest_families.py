"""Every guest family operators publish, end to end through the imgpipe command: whole 2 GiB disks
laid out like the real cloud images (family_disks), `imgpipe inspect --json` for what is derived
and its evidence, `imgpipe convert`/`publish` for what is written and what is refused (exit 19),
and a hostile root for exit 20. Each inspection's wall time and peak RSS is printed, never asserted."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import family_disks as fd
import guest_disks as gd
import pe_fixture as pf
import pytest
import windows_fixture as wf

from imgpipe.guest.fs import ntfs
from imgpipe.guest.policy import nova
from imgpipe_dev import bench

IMGPIPE = Path(sys.executable).with_name("imgpipe")
TOOLS = ("mkfs.xfs", "xfs_db", "mkfs.btrfs", "lvm", "losetup", "sfdisk", "mkfs.vfat", "mcopy", "qemu-img")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS),
                                reason="needs root (loop devices, mounts) and xfsprogs, btrfs-progs, lvm2, mtools")
needs_ntfs = pytest.mark.skipif(not (ntfs.available() and shutil.which("mkntfs") and os.path.exists("/dev/fuse")),
                                reason="needs ntfs-3g and /dev/fuse")

CLOUDBASE = "cloudbaseinit.metadata.services"
# family -> (wall seconds, peak RSS KiB of the largest process, peak sampled RSS KiB of the whole
# process tree: imgpipe with its qemu-nbd/qemu-img/ntfs-3g children) of `imgpipe inspect --json`
COST: dict[str, tuple[float, int, int]] = {}


def server_2022(drivers: dict[str, int]) -> wf.Windows:
    return wf.Windows("Windows Server 2022 Datacenter", "ServerDatacenter", "Server", "20348", "21H2",
                      drivers=drivers)


def imgpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IMGPIPE), *args], capture_output=True, text=True, check=False, timeout=300)


def refused(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The one-line error of a command that had to fail with `code`."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("imgpipe: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def inspect(disk: Path, family: str | None = None) -> dict[str, Any]:
    """`imgpipe inspect --json` under /usr/bin/time (max RSS of its largest process), the process
    tree's resident total sampled every 5 ms beside it."""
    started = time.monotonic()
    child = subprocess.Popen(["/usr/bin/time", "-f", "maxrss=%M", str(IMGPIPE), "inspect", "--json", str(disk)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], bench.tree_rss(child.pid) // 1024)  # KiB, as time's %M
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = child.communicate(timeout=300)
    sampler.join()
    wall = time.monotonic() - started
    assert child.returncode == 0, err
    if family:
        COST[family] = (wall, int(re.findall(r"maxrss=(\d+)", err)[-1]), peak[0])
    report: dict[str, Any] = json.loads(out)
    return report


def props(report: dict[str, Any], profile: str) -> dict[str, str]:
    return {k: v["value"] for k, v in report["derived_properties"][profile].items()}


def why(report: dict[str, Any], profile: str, key: str) -> str:
    return str(report["derived_properties"][profile][key]["evidence"])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def rocky(base: Path) -> tuple[Path, dict[str, Any]]:
    disk = fd.rocky(base / "rocky9.qcow2")
    return disk, inspect(disk, "Rocky 9 (xfs, separate /boot)")


def test_rocky_root_is_found_by_os_release_not_by_size(rocky: tuple[Path, dict[str, Any]]) -> None:
    guest = rocky[1]["guest"]
    assert guest["root"]["value"] == {"partition": 4, "filesystem": "xfs", "found_by": "os-release"}
    assert guest["root"]["evidence"] == "partition 4 (xfs; root found by os-release)"
    assert guest["boot"]["value"] == {"partition": 3, "filesystem": "xfs"}  # the larger partition
    assert guest["kernel"]["value"] == fd.ROCKY_KERNEL
    assert guest["kernel"]["evidence"] == (f"partition 3 /vmlinuz-{fd.ROCKY_KERNEL}; modules in partition 4 "
                                           f"/lib/modules/{fd.ROCKY_KERNEL}")
    assert guest["init"] == {"value": "/usr/lib/systemd/systemd",
                             "evidence": "partition 4 /sbin/init -> /usr/lib/systemd/systemd"}
    drivers = guest["drivers"]["value"]
    assert drivers["vmw_pvscsi"] == f"/usr/lib/modules/{fd.ROCKY_KERNEL}/kernel/drivers/scsi/vmw_pvscsi.ko.xz"
    assert set(drivers) == set(fd.RHEL9_DRIVERS)
    assert guest["cloud_init"]["installed"]["value"] is True and guest["unchecked"] == []


def test_rocky_derives_in_openstack_words(rocky: tuple[Path, dict[str, Any]]) -> None:
    report = rocky[1]
    assert props(report, "kvm") == {"architecture": "x86_64", "os_type": "linux", "os_distro": "rocky",
                                    "os_version": "9.4", "hw_qemu_guest_agent": "yes"}
    assert why(report, "kvm", "os_distro") == "partition 4 /etc/os-release -> /usr/lib/os-release (ID=rocky)"
    assert why(report, "kvm", "os_version") == "partition 4 /etc/os-release -> /usr/lib/os-release (VERSION_ID)"
    assert why(report, "kvm", "architecture") == ("partition 2 (ESP) EFI/BOOT/BOOTX64.EFI (PE machine); partition 4 "
                                                  "/usr/lib/systemd/systemd (ELF e_machine 0x3e); partition 4 /usr/bin/sh "
                                                  "(ELF e_machine 0x3e)")
    assert why(report, "kvm", "hw_qemu_guest_agent") == "partition 4 /usr/bin/qemu-ga"
    for profile in ("vmware", "vmware-ova"):
        assert props(report, profile) == {"architecture": "x86_64", "os_type": "linux",
                                          "vmware_ostype": "rockylinux_64Guest", "vmware_adaptertype": "paraVirtual"}
    evidence = why(report, "vmware", "vmware_adaptertype")
    assert "no mptspi for vmware_adaptertype=lsiLogic" in evidence and "has vmw_pvscsi" in evidence
    assert f"partition 4 /usr/lib/modules/{fd.ROCKY_KERNEL}" in evidence


def test_rocky_converts_for_vmware_with_the_controller_it_has(rocky: tuple[Path, dict[str, Any]],
                                                              tmp_path: Path) -> None:
    proc = imgpipe("convert", str(rocky[0]), "-p", "vmware", "-p", "vmware-ova", "--output-dir", str(tmp_path),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    outputs = {o["profiles"][0]: Path(o["path"]) for o in json.loads(proc.stdout)}
    with outputs["vmware"].open("rb") as f:  # paraVirtual's descriptor adapter is lsilogic (DESIGN.md)
        assert b'ddb.adapterType = "lsilogic"' in f.read(64 << 10)
    with tarfile.open(outputs["vmware-ova"]) as ova:
        first = ova.getmembers()[0]
        assert first.name.endswith(".ovf")
        ovf = ova.extractfile(first).read().decode()  # type: ignore[union-attr]
    assert "<rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>" in ovf
    assert "lsilogic<" not in ovf
    assert 'vmw:osType="rockylinux_64Guest"' in ovf


@pytest.mark.slow
def test_an_explicit_controller_without_its_driver_is_refused(glance: object, rocky: tuple[Path, dict[str, Any]],
                                                              tmp_path: Path) -> None:
    for flag, value in (("--property", "vmware_adaptertype=lsiLogic"),
                        ("--profile-property", "vmware:vmware_adaptertype=lsiLogic")):
        line = refused(imgpipe("publish", str(rocky[0]), "-p", "vmware", "--name", "rocky", "--cloud", "test",
                               flag, value, "--work-dir", str(tmp_path)), 19)
        assert "needs the mptspi driver for vmware_adaptertype=lsiLogic" in line, line
        assert f"partition 4 /usr/lib/modules/{fd.ROCKY_KERNEL}" in line


def test_rocky_without_any_vmware_controller_driver_is_refused(base: Path, tmp_path: Path) -> None:
    disk = fd.rocky(base / "rocky9-nodrivers.qcow2", drivers=("virtio_blk", "ahci"))
    assert "vmware_adaptertype" not in props(inspect(disk), "vmware")
    line = refused(imgpipe("convert", str(disk), "-p", "vmware", "--output-dir", str(tmp_path)), 19)
    assert "needs the mptspi driver for vmware_adaptertype=lsiLogic" in line, line
    assert list(tmp_path.iterdir()) == []
    assert imgpipe("convert", str(disk), "-p", "kvm", "--output-dir", str(tmp_path)).returncode == 0


@pytest.mark.slow
def test_rocky_lvm_root_is_the_logical_volume(base: Path) -> None:
    report = inspect(fd.rocky_lvm(base / "rocky9-lvm.qcow2"), "Rocky 9 LVM (xfs on rl/root)")
    guest = report["guest"]
    assert guest["root"]["value"] == {"partition": 4, "filesystem": "xfs", "found_by": "os-release",
                                      "volume": "rl/root"}
    assert guest["root"]["evidence"] == "partition 4 LV rl/root (xfs, LVM rl/root; root found by os-release)"
    assert guest["boot"]["value"] == {"partition": 3, "filesystem": "xfs"}
    assert guest["kernel"]["evidence"] == (f"partition 3 /vmlinuz-{fd.ROCKY_KERNEL}; modules in partition 4 "
                                           f"LV rl/root /lib/modules/{fd.ROCKY_KERNEL}")
    assert props(report, "kvm") == {"architecture": "x86_64", "os_type": "linux", "os_distro": "rocky",
                                    "os_version": "9.4", "hw_qemu_guest_agent": "yes"}
    assert why(report, "kvm", "os_distro") == "partition 4 LV rl/root /etc/os-release -> /usr/lib/os-release (ID=rocky)"
    assert props(report, "vmware")["vmware_ostype"] == "rockylinux_64Guest"
    assert props(report, "vmware")["vmware_adaptertype"] == "paraVirtual"
    assert "partition 4 LV rl/root" in why(report, "vmware", "vmware_adaptertype")


def test_fedora_btrfs_root_is_the_subvolume_fstab_names(base: Path) -> None:
    report = inspect(fd.fedora(base / "fedora40.qcow2"), "Fedora 40 (btrfs subvolume root, compressed)")
    root = report["guest"]["root"]
    assert root["value"] == {"partition": 4, "filesystem": "btrfs", "found_by": "type", "subvolume": "root"}
    # The top level (5) is the default subvolume and holds no /etc: os-release came from subvolume root.
    assert "/etc/fstab of subvolume 256 (root) mounts subvolume 256 (root) at / (subvol=root)" in root["evidence"]
    assert report["guest"]["boot"]["value"] == {"partition": 3, "filesystem": "ext4"}
    assert report["guest"]["kernel"]["value"] == fd.FEDORA_KERNEL
    assert props(report, "kvm") == {"architecture": "x86_64", "os_type": "linux", "os_distro": "fedora",
                                    "os_version": "40", "hw_qemu_guest_agent": "yes"}
    assert why(report, "kvm", "os_version") == "partition 4 /etc/os-release (VERSION_ID)"
    assert props(report, "vmware") == {"architecture": "x86_64", "os_type": "linux", "vmware_ostype": "fedora64Guest"}


def test_ubuntu_and_debian_get_bare_distribution_names(base: Path) -> None:
    ubuntu = inspect(fd.ubuntu(base / "ubuntu2404.qcow2"), "Ubuntu 24.04 (ext4)")
    assert ubuntu["guest"]["root"]["value"] == {"partition": 1, "filesystem": "ext4", "found_by": "type"}
    assert props(ubuntu, "kvm")["os_distro"] == "ubuntu" and props(ubuntu, "kvm")["os_version"] == "24.04"
    assert props(ubuntu, "vmware")["vmware_ostype"] == "ubuntu64Guest"
    assert "vmware_adaptertype" not in props(ubuntu, "vmware")  # it has mptspi
    debian = inspect(gd.build(base / "debian12.qcow2", gd.Guest()))
    assert props(debian, "kvm")["os_distro"] == "debian" and props(debian, "kvm")["os_version"] == "12"
    assert why(debian, "kvm", "os_distro") == "partition 3 /etc/os-release (ID=debian)"
    assert props(debian, "vmware")["vmware_ostype"] == "debian12_64Guest"


@pytest.fixture(scope="module")
def windows(base: Path) -> dict[str, Path]:
    variants = {
        "2022-virtio": (server_2022({"viostor": 0, "vioscsi": 0, "netkvm": 3}),
                        [f"{CLOUDBASE}.httpservice.HttpService", f"{CLOUDBASE}.configdrive.ConfigDriveService"]),
        "2022-bare": (server_2022({"LSI_SAS": 0, "E1G60": 3}), None),
        "11-ec2": (wf.Windows("Windows 10 Pro", "Professional", "Client", "22631", "23H2", drivers={"netkvm": 3}),
                   [f"{CLOUDBASE}.ec2service.EC2Service"]),
    }
    disks = {name: fd.windows(base / f"windows-{name}.qcow2", w, services) for name, (w, services) in variants.items()}
    # Windows' boot manager as Microsoft signs it (a made-up CA carrying the name the firmware's db holds)
    signed = pf.pe_image(signers=(pf.key("Microsoft Windows", "Microsoft Windows Production PCA 2011"),))
    disks["11-signed"] = fd.windows(base / "windows-11-signed.qcow2", variants["11-ec2"][0],
                                    [f"{CLOUDBASE}.httpservice.HttpService"], signed)
    return disks


@needs_ntfs
def test_windows_server_2022_with_virtio_drivers(windows: dict[str, Path], tmp_path: Path) -> None:
    report = inspect(windows["2022-virtio"], "Windows Server 2022 (NTFS, hives)")
    guest = report["guest"]
    assert guest["windows"]["value"]["ProductName"] == "Windows Server 2022 Datacenter"
    assert guest["windows"]["value"]["CurrentBuildNumber"] == 20348
    assert guest["windows"]["evidence"] == ("partition 3 /Windows/System32/config/SOFTWARE "
                                            "\\Microsoft\\Windows NT\\CurrentVersion")
    assert {k for k, v in guest["windows_drivers"]["value"].items() if v["enabled"]} == {"viostor", "vioscsi",
                                                                                          "netkvm"}
    assert props(report, "kvm") == {"hw_firmware_type": "uefi", "architecture": "x86_64", "os_type": "windows",
                                    "os_distro": "windows", "os_version": "10"}
    assert why(report, "kvm", "os_version").endswith("(CurrentMajorVersionNumber, CurrentMinorVersionNumber)")
    assert props(report, "vmware")["vmware_ostype"] == "windows2019srvNext_64Guest"
    assert "CurrentBuildNumber=20348, InstallationType=Server" in why(report, "vmware", "vmware_ostype")
    assert "os_distro" not in props(report, "vmware")
    proc = imgpipe("convert", str(windows["2022-virtio"]), "-p", "kvm", "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr  # [HttpService, ConfigDriveService] reaches OpenStack


@needs_ntfs
def test_windows_without_virtio_drivers_gets_sata_and_e1000(windows: dict[str, Path], tmp_path: Path) -> None:
    report = inspect(windows["2022-bare"])
    kvm = props(report, "kvm")
    assert kvm["hw_disk_bus"] == "sata" and kvm["hw_vif_model"] == "e1000"
    assert why(report, "kvm", "hw_disk_bus").startswith("the guest has no viostor for hw_disk_bus=virtio, but has "
                                                        "an inbox driver (partition 3 /Windows/System32/config/SYSTEM")
    assert why(report, "kvm", "hw_vif_model").startswith("no netkvm (virtio NIC driver)")
    vmware = props(report, "vmware")
    assert vmware["vmware_adaptertype"] == "lsiLogicsas" and vmware["vmware_ostype"] == "windows2019srvNext_64Guest"
    assert "no LSI_SCSI for vmware_adaptertype=lsiLogic, but has LSI_SAS" in why(report, "vmware",
                                                                                 "vmware_adaptertype")
    proc = imgpipe("convert", str(windows["2022-bare"]), "-p", "kvm", "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr


@needs_ntfs
def test_windows_partition_copy_over_the_budget_is_refused(windows: dict[str, Path]) -> None:
    """ntfs-3g reads a file, so the NTFS partition is copied out: never more data than the budget."""
    proc = subprocess.run([str(IMGPIPE), "inspect", str(windows["2022-bare"])], capture_output=True, text=True,
                          check=False, timeout=300, env={**os.environ, "IMGPIPE_INSPECT_COPY": "1M"})
    line = refused(proc, 20)
    assert line.startswith(f"imgpipe: error: {windows['2022-bare']}: partition 3 holds "), line
    assert line.endswith(" of data, over the 1.0 MiB budget for a copy (IMGPIPE_INSPECT_COPY)"), line


@pytest.mark.slow
@needs_ntfs
def test_windows_explicit_virtio_bus_without_viostor_is_refused(glance: object, windows: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    line = refused(imgpipe("publish", str(windows["2022-bare"]), "-p", "kvm", "--name", "win", "--cloud", "test",
                           "--property", "hw_disk_bus=virtio", "--work-dir", str(tmp_path)), 19)
    assert "needs the viostor driver for hw_disk_bus=virtio" in line, line


@needs_ntfs
def test_windows_11_client_and_cloudbase_init_asking_only_ec2(windows: dict[str, Path], tmp_path: Path) -> None:
    report = inspect(windows["11-ec2"])
    assert props(report, "vmware")["vmware_ostype"] == "windows11_64Guest"
    assert props(report, "kvm")["os_version"] == "10"
    assert "hw_vif_model" not in props(report, "kvm") and props(report, "kvm")["hw_disk_bus"] == "sata"
    tpm = {"hw_tpm_version": "2.0", "hw_tpm_model": "tpm-crb", "hw_firmware_type": "uefi", "hw_machine_type": "q35"}
    assert {k: props(report, "kvm")[k] for k in tpm} == tpm
    assert all(value in nova.ENUMS[key] for key, value in tpm.items() if key in nova.ENUMS)
    assert "CurrentBuildNumber=22631 >= 22000, InstallationType=Client" in why(report, "kvm", "hw_tpm_version")
    # its boot manager is not signed: Secure Boot would refuse it, so os_secure_boot is not derived
    assert "os_secure_boot" not in props(report, "kvm") and "hw_tpm_version" not in props(report, "vmware")
    signed = inspect(windows["11-signed"])
    assert {k: props(signed, "kvm")[k] for k in tpm} == tpm and props(signed, "kvm")["os_secure_boot"] == "required"
    assert signed["guest"]["secure_boot"]["value"]["steps"][0]["trusted_by"] == "Microsoft Windows Production PCA 2011"
    server = inspect(windows["2022-virtio"])
    assert "hw_tpm_version" not in props(server, "kvm")
    line = refused(imgpipe("convert", str(windows["11-ec2"]), "-p", "kvm", "--output-dir", str(tmp_path)), 19)
    assert f"cloudbase-init metadata_services [EC2Service] (from partition 3 /{wf.CLOUDBASE_CONF}" in line, line
    assert "asks neither HttpService nor ConfigDriveService" in line
    assert list(tmp_path.iterdir()) == []
    proc = imgpipe("convert", str(windows["11-ec2"]), "-p", "kvm", "--output-dir", str(tmp_path), "--force-boot",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)[0]["path"]).is_file()
    assert "forced (--force-boot)" in proc.stderr


@pytest.fixture(scope="module")
def datasources(base: Path) -> dict[str, Path]:
    return {name: fd.rocky(base / f"rocky9-{name}.qcow2", datasources=listed)
            for name, listed in (("ec2", "[ Ec2, None ]"), ("configdrive", "[ ConfigDrive, None ]"))}


def test_cloud_init_asking_only_ec2_converts_with_a_warning(datasources: dict[str, Path], tmp_path: Path) -> None:
    """[ Ec2, None ] takes its key from nova's metadata service (boot-check --metadata-service shows
    it): without a cloud that declares its paths, a warning that it has no config drive path."""
    proc = imgpipe("convert", str(datasources["ec2"]), "-p", "kvm", "--output-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)[0]["path"]).is_file()
    assert ("cloud-init datasource_list [Ec2, None] (from partition 4 /etc/cloud/cloud.cfg.d/99-datasource.cfg) "
            "reaches OpenStack only through the metadata service") in proc.stderr, proc.stderr


@pytest.mark.slow
def test_cloud_init_asking_only_ec2_is_refused_for_a_cloud_declaring_config_drive_only(
        glance, datasources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """clouds.yaml's imgpipe: {metadata: [config-drive]} makes the rule exact for that cloud: publish
    refuses before converting or uploading anything (exit 19, naming the cloud)."""
    import yaml

    from imgpipe.cloud import clouds
    from imgpipe.cloud import glance as glance_api

    config = yaml.safe_load(Path(os.environ["OS_CLIENT_CONFIG_FILE"]).read_text())
    config["clouds"]["drive-only"] = {**config["clouds"]["test"], "imgpipe": {"metadata": ["config-drive"]}}
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    (tmp_path / "work").mkdir()
    line = refused(imgpipe("publish", str(datasources["ec2"]), "-p", "kvm", "--name", "ec2-drive-only",
                           "--cloud", "drive-only", "--work-dir", str(tmp_path / "work")), 19)
    assert ("profile kvm on cloud drive-only: cloud-init datasource_list [Ec2, None] (from partition 4 "
            "/etc/cloud/cloud.cfg.d/99-datasource.cfg) reaches OpenStack only through the metadata service") in line
    assert glance_api.list_images(clouds.connect("test"), {"name": "ec2-drive-only-kvm"}) == []
    assert list((tmp_path / "work").iterdir()) == []


def test_cloud_init_asking_only_configdrive_derives_a_mandatory_config_drive(datasources: dict[str, Path]) -> None:
    report = inspect(datasources["configdrive"])
    assert props(report, "kvm")["img_config_drive"] == "mandatory"
    assert why(report, "kvm", "img_config_drive").startswith(
        "cloud-init datasource_list [ConfigDrive, None] (from partition 4 /etc/cloud/cloud.cfg.d/99-datasource.cfg")


def test_a_root_directory_inside_itself_is_exit_20_in_one_line(base: Path) -> None:
    disk = fd.rocky(base / "rocky9-loop.qcow2", loop=True)
    started = time.monotonic()
    line = refused(imgpipe("inspect", "--json", str(disk)), 20)
    assert time.monotonic() - started < 60
    assert re.fullmatch(rf"imgpipe: error: {re.escape(str(disk))}: partition 4: corrupt xfs filesystem: "
                        r"directory inode \d+ is inside itself", line), line


def test_print_inspection_cost_per_family() -> None:
    """Last in the file: what each family's 2 GiB disk cost to inspect (printed, not asserted)."""
    for family, (wall, rss, tree_rss) in COST.items():
        print(f"\ninspect --json, 2 GiB disk, {family}: {wall:.2f} s wall, peak RSS {rss / 1024:.1f} MiB "
              f"(largest process), {tree_rss / 1024:.1f} MiB (process tree, sampled)")
    assert COST
