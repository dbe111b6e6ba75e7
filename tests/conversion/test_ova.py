"""vmware-ova output read back the way nova reads it, and OVA sources (vSphere exports) as input."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cli_invoke import imgpipe
from conftest import qemu_img, qemu_info
from imgpipe_dev.sample_disk import docker_archive
from ova_reader import OVF, RASD, VMW, nova_read

from imgpipe import errors, profiles
from imgpipe.cli.base import EXIT_CODES
from imgpipe.conversion import ova
from imgpipe.conversion.convert import Options, converted_size
from imgpipe.pipeline.convert import convert_source


@pytest.fixture(scope="module")
def built(sample_qcow2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("ova")
    [out] = convert_source(sample_qcow2, profiles.select(["vmware-ova"], profiles.load_all()),
                           Options(out_dir=out_dir, verify=True))
    assert (out.disk_format, out.container_format, out.path.suffix) == ("vmdk", "ova", ".ova")
    return out.path


def _derived(path: Path) -> dict[str, str]:
    code, stdout, stderr = imgpipe("inspect", path, "--json")
    assert code == 0, stderr
    return {k: v["value"] for k, v in json.loads(stdout)["derived_properties"]["vmware-ova"].items()}


def test_read_back_like_nova(built: Path, sample_qcow2: Path, tmp_path: Path) -> None:
    root, href = nova_read(built, tmp_path / "disk.vmdk")
    info = qemu_info(tmp_path / "disk.vmdk", "vmdk")
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    qemu_img("compare", "-f", "qcow2", "-F", "vmdk", str(sample_qcow2), str(tmp_path / "disk.vmdk"))
    disk = root.find(f"./{OVF}DiskSection/{OVF}Disk")
    assert int(disk.get(f"{OVF}capacity")) == info["virtual-size"]
    assert disk.get(f"{OVF}capacityAllocationUnits") == "byte"
    assert disk.get(f"{OVF}format").endswith("#streamOptimized")
    ref = root.find(f"./{OVF}References/{OVF}File")
    assert int(ref.get(f"{OVF}size")) == (tmp_path / "disk.vmdk").stat().st_size
    system = root.find(f"./{OVF}VirtualSystem")
    guest_id = _derived(sample_qcow2).get("vmware_ostype", "otherGuest64")  # the sample copies the host's os-release
    assert system.find(f"./{OVF}OperatingSystemSection").get(f"{VMW}osType") == guest_id
    items = system.findall(f"./{OVF}VirtualHardwareSection/{OVF}Item")
    controller = next(i for i in items if i.findtext(f"{RASD}ResourceType") == "6")
    assert controller.findtext(f"{RASD}ResourceSubType") == "lsilogic"  # vmware_adaptertype lsiLogic
    hard_disk = next(i for i in items if i.findtext(f"{RASD}ResourceType") == "17")
    assert hard_disk.findtext(f"{RASD}Parent") == controller.findtext(f"{RASD}InstanceID")
    assert hard_disk.findtext(f"{RASD}HostResource") == f"ovf:/disk/{disk.get(OVF + 'diskId')}"
    firmware = system.find(f"./{OVF}VirtualHardwareSection/{VMW}Config[@{VMW}key='firmware']")
    assert firmware.get(f"{VMW}value") == "bios"


def test_members_in_order_with_manifest(built: Path) -> None:
    with tarfile.open(built) as tar:
        names = tar.getnames()
        assert [Path(n).suffix for n in names] == [".ovf", ".vmdk", ".mf"]
        manifest = tar.extractfile(names[2]).read().decode().splitlines()
        assert manifest == [f"SHA256({n})= {hashlib.sha256(tar.extractfile(n).read()).hexdigest()}"
                            for n in names[:2]]


@pytest.mark.parametrize(("props", "kind", "subtype", "firmware", "ostype"), [
    ({"vmware_adaptertype": "lsiLogicsas"}, "6", "lsilogicsas", "bios", "otherGuest64"),
    ({"vmware_adaptertype": "busLogic"}, "6", "buslogic", "bios", "otherGuest64"),
    ({"vmware_adaptertype": "paraVirtual", "hw_firmware_type": "uefi"}, "6", "VirtualSCSI", "efi", "otherGuest64"),
    ({"vmware_adaptertype": "ide", "vmware_ostype": "ubuntu64Guest"}, "5", None, "bios", "ubuntu64Guest"),
])
def test_descriptor_follows_properties(props: dict, kind: str, subtype: str | None, firmware: str,
                                       ostype: str) -> None:
    root = ET.fromstring(ova.descriptor("vm", "vm.vmdk", 10, 1 << 30, props))
    items = root.findall(f"./{OVF}VirtualSystem/{OVF}VirtualHardwareSection/{OVF}Item")
    controller = next(i for i in items if i.findtext(f"{RASD}InstanceID") == "3")
    assert controller.findtext(f"{RASD}ResourceType") == kind
    assert controller.findtext(f"{RASD}ResourceSubType") == subtype
    hw = root.find(f"./{OVF}VirtualSystem/{OVF}VirtualHardwareSection")
    assert hw.find(f"./{VMW}Config").get(f"{VMW}value") == firmware
    assert root.find(f"./{OVF}VirtualSystem/{OVF}OperatingSystemSection").get(f"{VMW}osType") == ostype


def test_converted_size_of_an_ova(built: Path, sample_qcow2: Path) -> None:
    vsize = qemu_info(sample_qcow2, "qcow2")["virtual-size"]
    assert converted_size(built, profiles.load_all()["vmware-ova"]) == vsize


def test_ova_source_yields_its_disk(built: Path, sample_qcow2: Path, tmp_path: Path) -> None:
    [out] = convert_source(built, profiles.select(["kvm"], profiles.load_all()), Options(out_dir=tmp_path))
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(sample_qcow2), str(out.path))
    assert [p.name for p in tmp_path.iterdir()] == [out.path.name]


def _rewrite(src: Path, dest: Path, change: dict[str, bytes]) -> Path:
    """Copy an OVA, replacing the content of some members (by suffix)."""
    with tarfile.open(src) as tar, tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            suffix = Path(member.name).suffix
            data = change.get(suffix, data)
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest


def test_tampered_manifest_refused(built: Path, tmp_path: Path) -> None:
    with tarfile.open(built) as tar:
        mf = tar.extractfile(tar.getnames()[2]).read().decode()
    bad = mf.replace(mf.splitlines()[1][-64:], "0" * 64).encode()
    src = _rewrite(built, tmp_path / "tampered.ova", {".mf": bad})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, stderr = imgpipe("convert", src, "-p", "kvm", "--output-dir", out_dir)
    assert code == EXIT_CODES[errors.ChecksumError], stderr
    assert f"{src}: " in stderr and "does not match its sha256 in the manifest" in stderr
    assert list(out_dir.iterdir()) == []


def test_disk_href_outside_the_archive_refused(built: Path, tmp_path: Path) -> None:
    with tarfile.open(built) as tar:
        ovf = tar.extractfile(tar.getnames()[0]).read()
    href = ovf.split(b'ovf:href="', 1)[1].split(b'"', 1)[0]
    src = _rewrite(built, tmp_path / "evil.ova", {".ovf": ovf.replace(b'ovf:href="' + href, b'ovf:href="../../etc/passwd')})
    code, _, stderr = imgpipe("convert", src, "-p", "kvm", "--output-dir", tmp_path)
    assert code == EXIT_CODES[errors.UnsafeImageError], stderr
    assert "is not a plain member name" in stderr


def test_compressed_ova_source(built: Path, sample_qcow2: Path, tmp_path: Path) -> None:
    src = tmp_path / "appliance.ova.zst"
    subprocess.run(["zstd", "-q", str(built), "-o", str(src)], check=True)
    [out] = convert_source(src, profiles.select(["kvm"], profiles.load_all()), Options(out_dir=tmp_path))
    assert out.path.name == "appliance.qcow2"
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(sample_qcow2), str(out.path))


def test_docker_archive_written_with_dot_slash_names(tmp_path: Path) -> None:
    plain = docker_archive(tmp_path / "plain.tar", ["library/hello:1.0"])
    tree = tmp_path / "tree"
    tree.mkdir()
    with tarfile.open(plain) as tar:
        tar.extractall(tree, filter="data")
    dotted = tmp_path / "dotted.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(dotted), "."], check=True)
    with tarfile.open(dotted) as tar:
        assert "./manifest.json" in tar.getnames()
    [out] = convert_source(dotted, profiles.select(["docker"], profiles.load_all()), Options(out_dir=tmp_path))
    assert out.docker_name == "library/hello:1.0"
    assert json.loads((tree / "manifest.json").read_text())[0]["RepoTags"] == ["library/hello:1.0"]


def test_descriptor_uses_the_properties_the_image_will_carry(sample_qcow2: Path, tmp_path: Path) -> None:
    extra = {"vmware-ova": {"hw_firmware_type": "uefi", "vmware_ostype": "debian12_64Guest"}}
    [out] = convert_source(sample_qcow2, profiles.select(["vmware-ova"], profiles.load_all()),
                           Options(out_dir=tmp_path, properties=extra))
    root, _ = nova_read(out.path, tmp_path / "disk.vmdk")
    system = root.find(f"./{OVF}VirtualSystem")
    assert system.find(f"./{OVF}OperatingSystemSection").get(f"{VMW}osType") == "debian12_64Guest"
    assert system.find(f"./{OVF}VirtualHardwareSection/{VMW}Config").get(f"{VMW}value") == "efi"


def test_ova_disk_larger_than_free_space_refused(built: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        code, _, stderr = imgpipe("convert", built, "-p", "kvm", "--output-dir", small)
        assert code == EXIT_CODES[errors.NoSpaceError], stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_convert_states_what_inspection_derived(tmp_path: Path) -> None:
    import guest_disks

    uefi_only = guest_disks.build(tmp_path / "debian-uefi.qcow2", guest_disks.Guest())
    [out] = convert_source(uefi_only, profiles.select(["vmware-ova"], profiles.load_all()),
                           Options(out_dir=tmp_path))
    root, _ = nova_read(out.path, tmp_path / "disk.vmdk")
    system = root.find(f"./{OVF}VirtualSystem")
    assert system.find(f"./{OVF}OperatingSystemSection").get(f"{VMW}osType") == "debian12_64Guest"
    assert system.find(f"./{OVF}VirtualHardwareSection/{VMW}Config").get(f"{VMW}value") == "efi"


def test_descriptor_escapes_names_and_os_types() -> None:
    odd = 'a "quoted" <name> & \'more\''
    root = ET.fromstring(ova.descriptor(odd, odd + ".vmdk", 1, 1 << 20, {"vmware_ostype": odd}))
    ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
    assert root.find("ovf:VirtualSystem/ovf:Name", ns).text == odd  # type: ignore[union-attr]
    assert root.find("ovf:References/ovf:File", ns).get(f"{{{ns['ovf']}}}href") == odd + ".vmdk"  # type: ignore[union-attr]
