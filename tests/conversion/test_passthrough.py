"""A source that already is a profile's output is copied (convert) or uploaded as it is (publish)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from conftest import qemu_img
from typer.testing import CliRunner

from imgpipe import profiles
from imgpipe.cli import app
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api
from imgpipe.pipeline.publish import PublishRequest, publish
from imgpipe.conversion import passthrough
from imgpipe.conversion.convert import Options
from imgpipe.pipeline.convert import convert_source
from imgpipe.errors import UnsafeImageError


def _kvm(**update: object) -> list[profiles.Profile]:
    return [profiles.load_all()["kvm"].model_copy(update=update)]


def _convert(src: Path, out: Path, selected: list[profiles.Profile]) -> str:
    (output,) = convert_source(src, selected, Options(out_dir=out.parent, out_file=out))
    return output.engine


def test_plain_qcow2_is_copied_byte_for_byte(sample_qcow2: Path, tmp_path: Path) -> None:
    out = tmp_path / "kvm.qcow2"
    assert _convert(sample_qcow2, out, _kvm()) == "passthrough"
    assert out.read_bytes() == sample_qcow2.read_bytes()


@pytest.mark.parametrize("options", ["compression_type=zstd", "compat=0.10", "bitmap"])
def test_qcow2_features_older_readers_lack_are_converted(sample_qcow2: Path, tmp_path: Path,
                                                         options: str) -> None:
    src = tmp_path / "src.qcow2"
    qemu_img("convert", "-f", "qcow2", "-O", "qcow2",
             *([] if options == "bitmap" else ["-o", options]), str(sample_qcow2), str(src))
    if options == "bitmap":
        qemu_img("bitmap", "--add", str(src), "dirty")
    out = tmp_path / "kvm.qcow2"
    assert _convert(src, out, _kvm()) == "qemu"
    assert out.read_bytes() != src.read_bytes()


def test_extended_l2_is_refused_before_passthrough_is_considered(sample_qcow2: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.qcow2"
    qemu_img("convert", "-f", "qcow2", "-O", "qcow2", "-o", "extended_l2=on", str(sample_qcow2), str(src))
    with pytest.raises(UnsafeImageError, match="Unknown QCOW2 features"):
        _convert(src, tmp_path / "kvm.qcow2", _kvm())
    assert not passthrough.plain_qcow2({"compat": "1.1", "extended-l2": True})


def test_profile_can_opt_out(sample_qcow2: Path, tmp_path: Path) -> None:
    assert _convert(sample_qcow2, tmp_path / "kvm.qcow2", _kvm(passthrough=False)) == "qemu"


def test_opt_out_parses_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "kvm-plain.yaml").write_text(
        "description: kvm, uncompressed\ndisk_format: qcow2\noutput:\n  format: qcow2\npassthrough: false\n")
    assert profiles.load_all([tmp_path])["kvm-plain"].passthrough is False


@pytest.mark.slow
def test_publish_uploads_the_source_itself(glance, sample_qcow2: Path, tmp_path: Path) -> None:
    cloud = clouds.connect("test")
    req = PublishRequest(source=sample_qcow2, profiles=_kvm(), name="passthrough", tags=["imgpipe-test"])
    report = publish(req, [cloud], Options(out_dir=tmp_path, verify=True))
    assert report.failures == []
    (result,) = report.results
    image = glance_api.get_image(cloud, result.image_id)
    assert image is not None and image["status"] == "active"
    assert int(image["size"]) == sample_qcow2.stat().st_size
    assert image["checksum"] == hashlib.md5(sample_qcow2.read_bytes()).hexdigest()


def _image(sample: Path, dest: Path, fmt: str, options: str) -> Path:
    qemu_img("convert", "-f", "qcow2", "-O", fmt, *(["-o", options] if options else []), str(sample), str(dest))
    return dest


def _cli_convert(src: Path, out_dir: Path, *names: str) -> dict[str, dict[str, object]]:
    """`imgpipe convert --json` as a user runs it: each profile's output record."""
    argv = ["convert", str(src), "--output-dir", str(out_dir), "--json"]
    result = CliRunner().invoke(app, [*argv, *(a for n in names for a in ("-p", n))])
    assert result.exit_code == 0, result.stdout + result.stderr
    return {name: o for o in json.loads(result.stdout) for name in o["profiles"]}


@pytest.mark.parametrize(("fmt", "options", "profile"), [
    ("vmdk", "subformat=streamOptimized,adapter_type=lsilogic", "vmware"),
    ("vmdk", "subformat=monolithicSparse,adapter_type=lsilogic", "vmware-sparse"),
    ("vpc", "subformat=dynamic,force_size=on", "hyperv-gen1"),
    # qemu's default vhd sizes the disk by its CHS geometry and writes that as the footer's size
    ("vpc", "subformat=dynamic", "hyperv-gen1"),
    ("vhdx", "subformat=dynamic", "hyperv"),
])
def test_source_that_is_the_output_is_copied(sample_qcow2: Path, tmp_path: Path,
                                             fmt: str, options: str, profile: str) -> None:
    src = _image(sample_qcow2, tmp_path / "src", fmt, options)
    (tmp_path / "out").mkdir()
    out = _cli_convert(src, tmp_path / "out", profile)[profile]
    assert out["engine"] == "passthrough"
    assert Path(str(out["path"])).read_bytes() == src.read_bytes()


def test_output_table_says_passthrough(sample_qcow2: Path, tmp_path: Path) -> None:
    src = _image(sample_qcow2, tmp_path / "src.vmdk", "vmdk", "subformat=streamOptimized,adapter_type=lsilogic")
    result = CliRunner().invoke(app, ["convert", str(src), "-p", "vmware", "-o", str(tmp_path / "out.vmdk")])
    assert result.exit_code == 0, result.stderr
    assert "passthrough" in result.stdout
    assert (tmp_path / "out.vmdk").read_bytes() == src.read_bytes()


def _assert_converted(src: Path, src_format: str, profile: str, out_dir: Path) -> None:
    """Converted, not copied, and the guest still sees the source's disk."""
    out_dir.mkdir()
    out = _cli_convert(src, out_dir, profile)[profile]
    assert out["engine"] != "passthrough"
    path = Path(str(out["path"]))
    assert path.read_bytes() != src.read_bytes()
    out_format = profiles.load_all()[profile].output.format  # type: ignore[union-attr]
    qemu_img("compare", "-f", src_format, "-F", out_format, str(src), str(path))


@pytest.mark.parametrize(("fmt", "options", "profile"), [
    ("vmdk", "subformat=streamOptimized,adapter_type=buslogic", "vmware"),
    ("vmdk", "subformat=monolithicSparse", "vmware-sparse"),  # qemu's default adapter, ide
    ("vmdk", "subformat=monolithicSparse,adapter_type=lsilogic", "vmware"),
    ("vmdk", "subformat=streamOptimized,adapter_type=lsilogic", "vmware-sparse"),
    ("vhdx", "subformat=fixed", "hyperv"),
])
def test_source_unlike_the_output_is_converted(sample_qcow2: Path, tmp_path: Path,
                                               fmt: str, options: str, profile: str) -> None:
    src = _image(sample_qcow2, tmp_path / "src", fmt, options)
    _assert_converted(src, fmt, profile, tmp_path / "out")


def test_fixed_vhd_is_converted(sample_qcow2: Path, tmp_path: Path) -> None:
    """Its only footer is at the end, so inspection (like Glance's) takes it for raw."""
    src = _image(sample_qcow2, tmp_path / "src.vhd", "vpc", "subformat=fixed")
    _assert_converted(src, "raw", "hyperv-gen1", tmp_path / "out")


def _patch_vhd_original_size(path: Path, size: int) -> None:
    """Both footer copies claim another original size (the one Glance's inspector reports)."""
    data = bytearray(path.read_bytes())
    footer = bytearray(data[:512])
    struct.pack_into(">Q", footer, 40, size)
    struct.pack_into(">I", footer, 64, 0)
    struct.pack_into(">I", footer, 64, ~sum(footer) & 0xFFFFFFFF)
    data[:512] = data[-512:] = footer
    path.write_bytes(data)


def test_vhd_readers_would_size_differently_is_converted(sample_qcow2: Path, tmp_path: Path) -> None:
    src = _image(sample_qcow2, tmp_path / "src.vhd", "vpc", "subformat=dynamic,force_size=on")
    _patch_vhd_original_size(src, 1 << 20)
    _assert_converted(src, "vpc", "hyperv-gen1", tmp_path / "out")


def test_vhd_whose_trailing_footer_differs_is_converted(sample_qcow2: Path, tmp_path: Path) -> None:
    """qemu reads the leading footer copy, Hyper-V the trailing one."""
    src = _image(sample_qcow2, tmp_path / "src.vhd", "vpc", "subformat=dynamic,force_size=on")
    with src.open("r+b") as f:
        f.seek(-512 + 68, 2)  # the disk's unique id, in the trailing copy only
        f.write(b"\xff" * 16)
    _assert_converted(src, "vpc", "hyperv-gen1", tmp_path / "out")


@pytest.mark.parametrize(("fmt", "options", "plain", "packaged"), [
    ("vmdk", "subformat=streamOptimized,adapter_type=lsilogic", "vmware", "vmware-ova"),
    ("vpc", "subformat=dynamic,force_size=on", "hyperv-gen1", "xen"),
])
def test_packaged_twin_converts_beside_the_copy(sample_qcow2: Path, tmp_path: Path, fmt: str,
                                                options: str, plain: str, packaged: str) -> None:
    src = _image(sample_qcow2, tmp_path / "src", fmt, options)
    (tmp_path / "out").mkdir()
    outputs = _cli_convert(src, tmp_path / "out", plain, packaged)
    assert outputs[plain]["engine"] == "passthrough"
    assert outputs[packaged]["engine"] != "passthrough"
    assert Path(str(outputs[plain]["path"])).read_bytes() == src.read_bytes()
