"""Every profile converts a real GPT disk; outputs are compared with the source by qemu-img."""

from __future__ import annotations

import os
import struct
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import qemu_img, qemu_info
from imgpipe_dev.sample_disk import docker_archive

from imgpipe import profiles
from imgpipe.conversion.convert import Options
from imgpipe.pipeline.convert import convert_source
from imgpipe.errors import ConversionError, ProfileError, UnsafeImageError
from imgpipe.source.inspect import inspect_image


def _descriptor(vmdk: Path) -> str:
    """The embedded descriptor text of a sparse/streamOptimized vmdk (header fields in sectors)."""
    with vmdk.open("rb") as f:
        header = f.read(512)
        offset, size = struct.unpack_from("<QQ", header, 28)
        f.seek(offset * 512)
        return f.read(size * 512).split(b"\0", 1)[0].decode()


@pytest.fixture(scope="module")
def all_outputs(sample_qcow2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("outputs")
    selected = profiles.select(["all"], profiles.load_all())
    outputs = convert_source(sample_qcow2, selected, Options(out_dir=out_dir, verify=True, engine="qemu"))
    assert all(o.verified for o in outputs)
    return {name: o.path for o in outputs for name in o.profiles}


def test_shared_outputs_convert_once(all_outputs: dict[str, Path]) -> None:
    assert all_outputs["kvm"] == all_outputs["qemu"] == all_outputs["ironic"]
    assert all_outputs["lxc"] == all_outputs["uml"]
    assert all_outputs["vmware"] != all_outputs["vmware-sparse"]
    assert all_outputs["kvm-raw"] != all_outputs["lxc"]  # whole disk vs root filesystem, both raw
    assert len(set(all_outputs.values())) == 9
    assert not [p for p in all_outputs["kvm"].parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("profile", "fmt"), [
    ("kvm", "qcow2"), ("kvm-raw", "raw"), ("vmware", "vmdk"), ("vmware-sparse", "vmdk"), ("hyperv", "vhdx"),
    ("hyperv-gen1", "vpc"),
])
def test_whole_disk_outputs_identical(all_outputs: dict[str, Path], sample_qcow2: Path,
                                      profile: str, fmt: str) -> None:
    out = all_outputs[profile]
    qemu_img("compare", "-f", "qcow2", "-F", fmt, str(sample_qcow2), str(out))
    assert qemu_info(out, fmt)["virtual-size"] == qemu_info(sample_qcow2, "qcow2")["virtual-size"]
    assert inspect_image(out).format == fmt


@pytest.mark.parametrize(("profile", "subformat"), [("vmware", "streamOptimized"),
                                                    ("vmware-sparse", "monolithicSparse")])
def test_vmdk_descriptor_matches_profile(all_outputs: dict[str, Path], profile: str, subformat: str) -> None:
    text = _descriptor(all_outputs[profile])
    assert f'createType="{subformat}"' in text
    assert 'ddb.adapterType = "lsilogic"' in text


def test_lxc_output_is_the_root_filesystem(all_outputs: dict[str, Path], sample_qcow2: Path) -> None:
    info = inspect_image(sample_qcow2)
    root = info.partitions[-1]
    out = all_outputs["lxc"]
    assert out.stat().st_size == root.size
    with out.open("rb") as f:
        f.seek(1080)
        assert f.read(2) == b"\x53\xef"  # ext superblock magic: a bare filesystem, no table
    spec = f"driver=raw,offset={root.start},size={root.size},file.driver=qcow2,file.file.filename={sample_qcow2}"
    qemu_img("compare", "--image-opts", spec, f"driver=raw,file.filename={out}")


def test_xen_is_tgz_of_0_vhd(all_outputs: dict[str, Path], sample_qcow2: Path, tmp_path: Path) -> None:
    with tarfile.open(all_outputs["xen"], "r:gz") as tar:
        assert tar.getnames() == ["0.vhd"]
        tar.extract("0.vhd", tmp_path, filter="data")
    qemu_img("compare", "-f", "qcow2", "-F", "vpc", str(sample_qcow2), str(tmp_path / "0.vhd"))


def test_docker_archive_validated_not_converted(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "img.tar", ["library/hello:1.0"])
    docker = profiles.select(["docker"], profiles.load_all())
    [out] = convert_source(archive, docker, Options(out_dir=tmp_path))
    assert out.path == archive and out.docker_name == "library/hello:1.0"
    assert out.container_format == "docker"


def test_docker_archive_without_tag_rejected(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "img.tar", None)
    with pytest.raises(UnsafeImageError, match="repo:tag"):
        convert_source(archive, profiles.select(["docker"], profiles.load_all()), Options(out_dir=tmp_path))


def test_docker_with_disk_image_refused(sample_qcow2: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsafeImageError, match="not a docker save archive"):
        convert_source(sample_qcow2, profiles.select(["docker"], profiles.load_all()), Options(out_dir=tmp_path))


def test_failure_in_a_later_output_leaves_nothing(sample_qcow2: Path, tmp_path: Path) -> None:
    """All or nothing: the kvm output converted first must not survive a later failure."""
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "broken.yaml").write_text(yaml.safe_dump({
        "description": "qemu-img refuses this cluster size", "disk_format": "qcow2",
        "output": {"format": "qcow2", "options": {"cluster_size": "3"}}}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    selected = profiles.select(["kvm", "broken"], profiles.load_all([pdir]))
    with pytest.raises(ConversionError, match="conversion for broken failed"):
        convert_source(sample_qcow2, selected, Options(out_dir=out_dir, engine="qemu"))
    assert list(out_dir.iterdir()) == []


def test_one_output_file_only(sample_qcow2: Path, tmp_path: Path) -> None:
    selected = profiles.select(["kvm", "vmware"], profiles.load_all())
    with pytest.raises(ProfileError, match="-o takes one output"):
        convert_source(sample_qcow2, selected, Options(out_file=tmp_path / "x.img"))
    [out] = convert_source(sample_qcow2, selected[:1], Options(out_file=tmp_path / "x.img"))
    assert out.path == tmp_path / "x.img" and qemu_info(out.path, "qcow2")["format"] == "qcow2"


@pytest.mark.parametrize("fmt", ["raw", "vmdk", "vpc", "vhdx"])
def test_any_qemu_format_as_source(sample_raw: Path, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / f"src.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, str(sample_raw), str(src))
    [out] = convert_source(src, profiles.select(["kvm"], profiles.load_all()),
                           Options(out_dir=tmp_path, verify=True))
    qemu_img("compare", "-f", "raw", "-F", "qcow2", str(sample_raw), str(out.path))


def test_native_stream_optimized_is_default_and_identical(sample_qcow2: Path, tmp_path: Path) -> None:
    [out] = convert_source(sample_qcow2, profiles.select(["vmware"], profiles.load_all()),
                           Options(out_dir=tmp_path, verify=True))
    assert out.engine == "native" and out.verified
    qemu_img("compare", "-f", "qcow2", "-F", "vmdk", str(sample_qcow2), str(out.path))
    qemu_img("check", "-f", "vmdk", str(out.path))
    text = _descriptor(out.path)
    assert 'createType="streamOptimized"' in text and 'ddb.adapterType = "lsilogic"' in text
    assert f'"{out.path.name}"' in text  # the extent names the final file, not the temp
    assert [p.name for p in tmp_path.iterdir()] == [out.path.name]


def test_native_stream_optimized_from_raw_reads_it_directly(sample_raw: Path, tmp_path: Path) -> None:
    """A whole raw source skips qemu-nbd (holes by SEEK_HOLE): the same bytes come out."""
    [out] = convert_source(sample_raw, profiles.select(["vmware"], profiles.load_all()),
                           Options(out_dir=tmp_path))
    assert out.engine == "native"
    qemu_img("compare", "-f", "raw", "-F", "vmdk", str(sample_raw), str(out.path))


def test_converted_size_checks_the_file_against_its_profile(all_outputs: dict[str, Path], sample_qcow2: Path,
                                                           tmp_path: Path) -> None:
    from imgpipe.conversion.convert import converted_size
    from imgpipe.errors import FormatMismatchError

    known = profiles.load_all()
    vsize = qemu_info(sample_qcow2, "qcow2")["virtual-size"]
    assert converted_size(all_outputs["xen"], known["xen"]) == vsize  # from 0.vhd's footer
    assert converted_size(all_outputs["vmware"], known["vmware"]) == vsize
    with pytest.raises(FormatMismatchError, match="content is qcow2, profile vmware uploads vmdk"):
        converted_size(all_outputs["kvm"], known["vmware"])
    with pytest.raises(UnsafeImageError, match="not a Xen tgz"):
        converted_size(all_outputs["kvm"], known["xen"])


def test_outputs_honour_the_umask(sample_qcow2: Path, tmp_path: Path) -> None:
    """Outputs get the mode any new file gets (0666 less the umask), not a fixed 0644."""
    import os

    selected = profiles.select(["kvm"], profiles.load_all())
    old = os.umask(0o027)
    try:
        [out] = convert_source(sample_qcow2, selected, Options(out_file=tmp_path / "private.qcow2"))
    finally:
        os.umask(old)
    assert out.path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("jobs", [1, 3])
def test_native_stream_optimized_through_qemu_nbd_cuts_ranges_mid_grain(tmp_path: Path, jobs: int) -> None:
    """4 KiB qcow2 clusters put the allocation map's range boundaries inside 64 KiB grains,
    and the odd size ends the disk inside a grain and a batch; the grains are read as several
    pipelined requests per server and must still be written back whole and in order."""
    from imgpipe import qemu
    from imgpipe.conversion.convert import _native_stream_optimized

    size = (5 << 20) + 3 * 4096 + 512
    raw = tmp_path / "src.raw"
    with raw.open("wb") as f:
        f.truncate(size)
        for offset, length in ((4096, 4096), (65536 + 12288, 8192), ((1 << 20) - 4096, 8192),
                               ((2 << 20) + 100, 300_000), (size - 4608, 4608)):
            f.seek(offset)
            f.write(os.urandom(length))
    src = tmp_path / "src.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", str(raw), str(src))
    assert any(start % (64 << 10) for start, _ in qemu.data_extents(qemu.Source(src, "qcow2")))
    out = tmp_path / "out.vmdk"
    _native_stream_optimized(qemu.Source(src, "qcow2"), out, out.name, "lsilogic", jobs, None)
    assert "identical" in qemu_img("compare", "-f", "raw", "-F", "vmdk", str(raw), str(out)).stdout
    qemu_img("check", "-f", "vmdk", str(out))


def test_early_stream_optimized_is_taken_over_or_stopped_and_removed(sample_qcow2: Path, tmp_path: Path) -> None:
    """The streamOptimized conversion started while the guest is inspected is the output
    convert_image commits; if the source is refused instead, it stops and leaves no file."""
    from imgpipe.conversion.convert import convert_image, early_copies

    info = inspect_image(sample_qcow2)
    vmware = profiles.select(["vmware"], profiles.load_all())
    taken = tmp_path / "taken"
    taken.mkdir()
    opts = Options(out_dir=taken, verify=True)
    with early_copies() as early:
        early.start(info, vmware, opts)
        assert len(list(taken.iterdir())) == 1  # the temp, written by the early conversion
        [out] = convert_image(info, vmware, opts, early=early)
    assert out.engine == "native" and out.verified
    assert [p.name for p in taken.iterdir()] == [out.path.name]
    qemu_img("compare", "-f", "qcow2", "-F", "vmdk", str(sample_qcow2), str(out.path))

    refused = tmp_path / "refused"
    refused.mkdir()
    with early_copies() as early:
        early.start(info, vmware, Options(out_dir=refused))
        assert len(list(refused.iterdir())) == 1
    assert list(refused.iterdir()) == []
