"""A source that already is a profile's output is copied (convert) or uploaded as it is (publish)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import qemu_img

from imgpipe import profiles
from imgpipe.cloud import clouds
from imgpipe.cloud import glance as glance_api
from imgpipe.cloud.publish import PublishRequest, publish
from imgpipe.conversion import passthrough
from imgpipe.conversion.convert import Options, convert_source
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
    req = PublishRequest(sample_qcow2, _kvm(), "passthrough", tags=["imgpipe-test"])
    report = publish(req, [cloud], Options(out_dir=tmp_path, verify=True))
    assert report.failures == []
    (result,) = report.results
    image = glance_api.get_image(cloud, result.image_id)
    assert image is not None and image["status"] == "active"
    assert int(image["size"]) == sample_qcow2.stat().st_size
    assert image["checksum"] == hashlib.md5(sample_qcow2.read_bytes()).hexdigest()
