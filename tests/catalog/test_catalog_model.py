"""The catalog file: what it accepts, and errors that name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from catalog_texts import GOOD, SHA, load

from imgpipe.catalog import model as catalog_model
from imgpipe.errors import CatalogError


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(CatalogError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_a_good_catalog_inherits_defaults_and_resolves_paths(tmp_path: Path) -> None:
    catalog = load(tmp_path, GOOD)

    ubuntu, debian = catalog.images
    assert ubuntu.clouds == ["east", "west"] and ubuntu.profiles == ["kvm", "vmware"]
    assert ubuntu.properties == {"os_distro": "ubuntu", "os_version": "24.04"}
    assert ubuntu.tags == ["catalog", "lts"]
    assert ubuntu.retention.keep == 2 and ubuntu.retention.expire == "delete"
    assert ubuntu.versions[1].version == "20240501"
    assert ubuntu.versions[1].source == str(tmp_path / "images" / "noble.qcow2")
    assert ubuntu.versions[1].sha256 == SHA
    assert [v.version for v in ubuntu.wanted()] == ["20240401", "20240501"]
    assert debian.retention.keep == 1 and debian.clouds == ["east"]
    assert debian.image_name("hyperv", "12.5") == "debian-12-12.5-hyperv"
    assert ubuntu.image_name("kvm", "20240501") == "ubuntu-24.04-kvm"


@pytest.mark.parametrize(("text", "line", "expected"), [
    (GOOD.replace("expire: delete", "expire: shred"), 7, "defaults.retention.expire"),
    (GOOD.replace("profiles: [hyperv]", "profiles: [hyperv, esx]"), 21, "unknown profile 'esx'"),
    (GOOD.replace("profiles: [hyperv]", "profiles: [docker]"), 21, "docker archives are not disk images"),
    (GOOD.replace(f"sha256: {SHA.upper()}", "sha256: abc"), 18, "images.0.versions.1.sha256"),
    (GOOD.replace("        checksum_url: https://127.0.0.1/20240401/SHA256SUMS\n", ""), 13,
     "exactly one of sha256 or checksum_url"),
    (GOOD.replace('{os_version: "24.04"}', "{os_version: 24.10}"), 10, "write it in quotes"),
    (GOOD.replace('{os_version: "24.04"}', "{checksum: x}"), 10, "checksum: reserved by Glance"),
    (GOOD.replace('{os_version: "24.04"}', "{imgpipe_profile: x}"), 10, "set by imgpipe itself"),
    (GOOD.replace("{name}-{version}-{profile}", "{name}-{version}"), 20, "must contain {profile}"),
    (GOOD.replace("{name}-{version}-{profile}", "{name}-{arch}-{profile}"), 20, "unknown field {arch}"),
    (GOOD.replace("retention: {keep: 1}", "retention: {keep: 3, expire_after: 2}"), 23,
     "expire_after (2) must be >= keep (3)"),
    (GOOD.replace("name: debian-12", "name: ubuntu-24.04"), 8, "'ubuntu-24.04' is listed twice"),
    (GOOD.replace('version: "12.5"', 'version: "12 5"'), 25, "images.1.versions.0.version"),
    (GOOD.replace("source: /srv/debian.qcow2", "source: ftp://host/debian.qcow2"), 25, "only http(s) URLs"),
    (GOOD.replace("    tags: [lts]\n", "    tag: [lts]\n"), 11, "images.0.tag: unknown key"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, expected: str) -> None:
    message = error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'catalog.yaml'}:{line}: "), message
    assert expected in message


def test_invalid_yaml_and_wrong_shapes(tmp_path: Path) -> None:
    assert error(tmp_path, "images: [\n  - name: x\n").startswith(f"{tmp_path / 'catalog.yaml'}:2: invalid YAML")
    assert "expected a mapping" in error(tmp_path, "- just a list\n")
    assert "images: Field required" in error(tmp_path, "defaults: {}\n")
    assert "cannot read" in str(pytest.raises(CatalogError, catalog_model.load, tmp_path / "missing.yaml").value)


def test_profile_properties_reach_only_their_profile(tmp_path: Path) -> None:
    text = GOOD.replace('    tags: [lts]\n', '    tags: [lts]\n    profile_properties: {vmware: {vmware_ostype: ubuntu64Guest}}\n')
    image = load(tmp_path, text).images[0]
    assert image.profile_properties == {"vmware": {"vmware_ostype": "ubuntu64Guest"}}


def test_profile_properties_for_a_profile_the_image_lacks(tmp_path: Path) -> None:
    text = GOOD.replace('    tags: [lts]\n', '    tags: [lts]\n    profile_properties: {hyperv: {x: y}}\n')
    message = error(tmp_path, text)
    assert "profile_properties.hyperv: not one of this image's profiles (kvm, vmware)" in message
    assert message.startswith(f"{tmp_path / 'catalog.yaml'}:")


def test_profile_properties_reserved_key(tmp_path: Path) -> None:
    text = GOOD.replace('    tags: [lts]\n', '    tags: [lts]\n    profile_properties: {vmware: {checksum: x}}\n')
    assert "checksum: reserved by Glance" in error(tmp_path, text)


def test_a_cloud_declares_its_metadata_paths(tmp_path: Path) -> None:
    catalog = load(tmp_path, GOOD + "clouds:\n  east:\n    metadata: [config-drive]\n  west: {}\n")
    assert catalog.metadata_paths("east") == frozenset({"config-drive"})
    assert catalog.metadata_paths("west") is None and catalog.metadata_paths("north") is None
    wrong = error(tmp_path, GOOD + "clouds:\n  east:\n    metadata: [floppy]\n")
    assert wrong.startswith(f"{tmp_path / 'catalog.yaml'}:") and "clouds.east.metadata" in wrong
    assert "config-drive" in wrong and "metadata-service" in wrong
    assert "clouds.east.metadata" in error(tmp_path, GOOD + "clouds:\n  east:\n    metadata: []\n")
