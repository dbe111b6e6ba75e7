from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imgpipe import profiles
from imgpipe.errors import ProfileError

SEED = {"kvm", "qemu", "lxc", "uml", "vmware", "vmware-sparse", "xen", "hyperv", "hyperv-gen1",
        "ironic", "docker"}
VMWARE = {
    "description": "test",
    "disk_format": "vmdk",
    "output": {"format": "vmdk", "options": {"subformat": "streamOptimized", "adapter_type": "lsilogic"}},
    "properties": {"hypervisor_type": "vmware", "vmware_disktype": "streamOptimized",
                   "vmware_adaptertype": "lsiLogic"},
}


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _edit(data: dict, dotted: str, value: object) -> dict:
    import copy
    out = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


def test_builtins_cover_every_seed_hypervisor() -> None:
    loaded = profiles.load_all()
    assert SEED <= set(loaded)
    assert loaded["vmware"].properties["vmware_adaptertype"] == "lsiLogic"
    assert loaded["vmware"].output.options["adapter_type"] == "lsilogic"
    assert "hypervisor_type" not in loaded["ironic"].properties
    assert loaded["xen"].container_format == "ovf"


@pytest.mark.parametrize(("dotted", "value", "message"), [
    ("colour", "blue", "colour: unknown key"),
    ("properties.vmware_adaptertype", "LSILOGIC", "properties.vmware_adaptertype: 'LSILOGIC' is not one of"),
    ("properties.checksum", "abc", "properties.checksum: reserved by Glance"),
    ("properties.os_glance_import_method", "x", "properties.os_glance_import_method: reserved"),
    ("properties.vmware_adaptertype", "busLogic", "adapter_type: lsilogic disagrees with properties.vmware_adaptertype busLogic"),
    ("disk_format", "qcow2", "disk_format: qcow2 disagrees with output.format vmdk"),
    ("output.options.adapter_type", None, "adapter_type: required for vmdk"),
    ("properties.vmware_disktype", "preallocated", "Glance >= 30 rejects flat/preallocated"),
    ("properties.vmware_disktype", "sparse", "vmware_disktype: sparse disagrees with output.options.subformat streamOptimized"),
    ("properties.hypervisor_type", "ironic", "nova's ironic driver reports 'baremetal'"),
    ("properties.hw_disk_bus", "VIRTIO", "properties.hw_disk_bus: 'VIRTIO' is not one of"),
    ("output.options.subformat", "monolithicFlat", "subformat: monolithicFlat is not accepted by Glance"),
    ("container_format", "docker", "container_format: docker is only for package: docker-archive"),
])
def test_each_mistake_names_file_and_key(tmp_path: Path, dotted: str, value: object, message: str) -> None:
    path = _write(tmp_path, "mine", _edit(VMWARE, dotted, value))
    with pytest.raises(ProfileError) as err:
        profiles.load_file(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_fixed_vhd_rejected(tmp_path: Path) -> None:
    data = {"description": "x", "disk_format": "vhd",
            "output": {"format": "vpc", "options": {"subformat": "fixed"}}}
    with pytest.raises(ProfileError, match="Glance detects a fixed vhd as raw"):
        profiles.load_file(_write(tmp_path, "fixed", data))


def test_gen2_needs_vhdx(tmp_path: Path) -> None:
    data = {"description": "x", "disk_format": "vhd",
            "output": {"format": "vpc", "options": {"subformat": "dynamic", "force_size": "on"}},
            "properties": {"hw_machine_type": "hyperv-gen2"}}
    with pytest.raises(ProfileError, match="hyperv-gen2 needs disk_format vhdx"):
        profiles.load_file(_write(tmp_path, "gen2", data))


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("description: x\ndisk_format: [raw\n")
    with pytest.raises(ProfileError, match=r"broken.yaml: line \d+ invalid YAML"):
        profiles.load_file(path)


def test_name_must_match_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="must equal the file name"):
        profiles.load_file(_write(tmp_path, "a", {**VMWARE, "name": "b"}))


def test_user_dir_and_env_override_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, cli_dir = tmp_path / "env", tmp_path / "cli"
    env_dir.mkdir()
    cli_dir.mkdir()
    _write(env_dir, "vmware", {**VMWARE, "description": "from env"})
    _write(env_dir, "extra", {**VMWARE, "description": "extra"})
    _write(cli_dir, "vmware", {**VMWARE, "description": "from cli"})
    monkeypatch.setenv(profiles.ENV_DIRS, str(env_dir))
    loaded = profiles.load_all([cli_dir])
    assert loaded["vmware"].description == "from cli"
    assert loaded["extra"].source == env_dir / "extra.yaml"
    assert "kvm" in loaded


def test_select_all_excludes_docker_and_rejects_unknown() -> None:
    loaded = profiles.load_all()
    names = [p.name for p in profiles.select(["all"], loaded)]
    assert "docker" not in names and "vmware" in names
    assert "kvm-secureboot" not in names  # in_all: false, it refuses most guests by design
    assert [p.name for p in profiles.select(["all", "kvm-secureboot"], loaded)][-1] == "kvm-secureboot"
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        profiles.select(["nope"], loaded)


def test_yaml_booleans_become_glance_strings(tmp_path: Path) -> None:
    data = _edit(VMWARE, "properties.hw_qemu_guest_agent", True)
    assert profiles.load_file(_write(tmp_path, "p", data)).properties["hw_qemu_guest_agent"] == "true"


def test_kvm_raw_is_raw_for_ceph_rbd() -> None:
    raw = profiles.load_all()["kvm-raw"]
    assert (raw.disk_format, raw.container_format, raw.output.format) == ("raw", "bare", "raw")
    assert raw.properties == {"hypervisor_type": "kvm"}
    assert "RBD" in raw.description


@pytest.mark.parametrize(("changes", "message"), [
    ({"package": None}, "container_format: ova is only produced by package: vmware-ova"),
    ({"container_format": "bare"}, "package: vmware-ova needs disk_format vmdk, container_format ova"),
    ({"output": {"format": "vmdk", "options": {"subformat": "monolithicSparse", "adapter_type": "lsilogic"}},
      "properties": {"vmware_disktype": "sparse"}}, "package: vmware-ova needs"),
])
def test_vmware_ova_contradictions(tmp_path: Path, changes: dict, message: str) -> None:
    data = {**VMWARE, "container_format": "ova", "package": "vmware-ova"}
    assert profiles.load_file(_write(tmp_path, "ova", data)).package == "vmware-ova"
    data = {k: v for k, v in {**data, **changes}.items() if v is not None}
    with pytest.raises(ProfileError, match=message):
        profiles.load_file(_write(tmp_path, "bad", data))
