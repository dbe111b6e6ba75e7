"""Publishing compressed sources, kvm-raw and vmware-ova to a real local Glance."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import qemu_img
from ova_reader import OVF, VMW, nova_read

from imgpipe import profiles
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api
from imgpipe.pipeline.publish import PublishRequest, publish
from imgpipe.cloud.upload import SOURCE_KEY
from imgpipe.conversion.convert import Options
from imgpipe.hashing import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(glance_server, sample_qcow2: Path, tmp_path_factory: pytest.TempPathFactory):
    """One .xz source published for kvm-raw and vmware-ova."""
    src = tmp_path_factory.mktemp("xz") / "guest.qcow2.xz"
    with src.open("wb") as out:
        subprocess.run(["xz", "-T0", "-c", str(sample_qcow2)], stdout=out, check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OS_CLIENT_CONFIG_FILE", str(glance_server.clouds_yaml))
        cloud = clouds.connect("test")
    work = tmp_path_factory.mktemp("work")
    req = PublishRequest(source=src, profiles=profiles.select(["kvm-raw", "vmware-ova"], profiles.load_all()), name="xzguest",
                         profile_properties={"vmware-ova": {"vmware_ostype": "debian12_64Guest"}})
    report = publish(req, [cloud], Options(out_dir=work, verify=True))
    assert report.failures == []
    assert list(work.iterdir()) == []  # the decompressed copy and the outputs are gone
    return cloud, src, {r.profile: r for r in report.results}


@pytest.mark.parametrize("name", ["kvm-raw", "vmware-ova"])
def test_formats_and_properties_in_glance(published, name: str) -> None:
    cloud, src, results = published
    profile = profiles.load_all()[name]
    image = glance_api.get_image(cloud, results[name].image_id)
    assert image["status"] == "active"
    assert (image["disk_format"], image["container_format"]) == (profile.disk_format, profile.container_format)
    for key, value in profile.properties.items():
        assert image[key] == value
    assert image[SOURCE_KEY] == sha256_file(src)  # the idempotency anchor is the file as published


def test_raw_in_glance_is_the_disk(published, sample_qcow2: Path, tmp_path: Path) -> None:
    cloud, _, results = published
    data = tmp_path / "raw"
    data.write_bytes(cloud.image.get(f"/v2/images/{results['kvm-raw'].image_id}/file").content)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", str(sample_qcow2), str(data))


def test_ova_in_glance_reads_like_nova(published, sample_qcow2: Path, tmp_path: Path) -> None:
    cloud, _, results = published
    ova = tmp_path / "image.ova"
    ova.write_bytes(cloud.image.get(f"/v2/images/{results['vmware-ova'].image_id}/file").content)
    root, _ = nova_read(ova, tmp_path / "disk.vmdk")
    assert root.find(f"./{OVF}VirtualSystem/{OVF}OperatingSystemSection").get(f"{VMW}osType") == "debian12_64Guest"
    qemu_img("compare", "-f", "qcow2", "-F", "vmdk", str(sample_qcow2), str(tmp_path / "disk.vmdk"))


def test_republish_of_the_xz_is_a_no_op(published, tmp_path: Path) -> None:
    cloud, src, _ = published
    req = PublishRequest(source=src, profiles=profiles.select(["kvm-raw", "vmware-ova"], profiles.load_all()), name="xzguest")
    report = publish(req, [cloud], Options(out_dir=tmp_path))
    assert {r.status for r in report.results} == {"unchanged"}
    assert list(tmp_path.iterdir()) == []  # not even decompressed
