"""Boot refusals through the real CLI: exit 19 before anything is converted, --force-boot overrides."""

from __future__ import annotations

from pathlib import Path

import guest_disks as gd
import pytest
from typer.testing import CliRunner

from imgpipe import errors
from imgpipe.cli import app
from imgpipe.cli.base import EXIT_CODES

runner = CliRunner()
REFUSED = EXIT_CODES[errors.GuestRefusedError]


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("refuse")
    variants = {
        "uefi": gd.Guest(),
        "bios": gd.Guest(loaders={}, bios=True),
        "none": gd.Guest(loaders={}),
        "noinit": gd.Guest(init=False),
        "msdata": gd.Guest(root_type=gd.MS_BASIC_DATA),
        "nolsi": gd.Guest(modules=("block/virtio_blk.ko", "scsi/virtio_scsi.ko")),
        "nomods": gd.Guest(modules=()),
    }
    return {name: gd.build(base / f"{name}.qcow2", g) for name, g in variants.items()}


def convert(src: Path, out: Path, *args: str) -> tuple[int, str]:
    out.mkdir(exist_ok=True)
    result = runner.invoke(app, ["convert", str(src), "--output-dir", str(out), *args])
    return result.exit_code, result.stderr


@pytest.mark.parametrize(("disk", "profile", "says"), [
    ("bios", "hyperv", "profile hyperv (Gen2) needs a UEFI boot path; this disk boots only with BIOS"),
    ("uefi", "hyperv-gen1", "profile hyperv-gen1 (Gen1) needs a BIOS boot path; this disk boots only with UEFI"),
    ("none", "kvm", "profile kvm boots the whole disk, but it has no boot path"),
    ("noinit", "lxc", "profile lxc boots the root filesystem"),
    ("nolsi", "vmware", "needs the mptspi driver for vmware_adaptertype=lsiLogic"),
    ("nolsi", "hyperv", "needs the hv_storvsc driver"),
])
def test_refused_before_converting(disks: dict[str, Path], tmp_path: Path, disk: str, profile: str,
                                   says: str) -> None:
    code, stderr = convert(disks[disk], tmp_path / "out", "-p", profile)
    assert code == REFUSED == 19, stderr
    line, = [e for e in stderr.strip().splitlines() if e.startswith("imgpipe: error:")]
    assert says in line and "--force-boot" in line
    assert list((tmp_path / "out").iterdir()) == []


def test_suggests_the_other_generation(disks: dict[str, Path], tmp_path: Path) -> None:
    assert "use -p hyperv-gen1" in convert(disks["bios"], tmp_path / "a", "-p", "hyperv")[1]
    assert "use -p hyperv," in convert(disks["uefi"], tmp_path / "b", "-p", "hyperv-gen1")[1]


def test_force_boot_converts_anyway(disks: dict[str, Path], tmp_path: Path) -> None:
    code, stderr = convert(disks["bios"], tmp_path / "out", "-p", "hyperv", "--force-boot")
    assert code == 0, stderr
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".vhdx"]


def test_bootable_profiles_pass(disks: dict[str, Path], tmp_path: Path) -> None:
    assert convert(disks["uefi"], tmp_path / "a", "-p", "kvm", "-p", "hyperv", "-p", "vmware-sparse")[0] == 0
    assert convert(disks["bios"], tmp_path / "b", "-p", "hyperv-gen1")[0] == 0


def test_untyped_root_is_extracted_for_lxc(disks: dict[str, Path], tmp_path: Path) -> None:
    """A 'Microsoft basic data' partition holding ext4 is the root, found by its signature."""
    code, stderr = convert(disks["msdata"], tmp_path / "out", "-p", "lxc")
    assert code == 0, stderr
    out, = (tmp_path / "out").iterdir()
    assert out.read_bytes()[1080:1082] == b"\x53\xef"  # the ext4 superblock magic at its start


def test_missing_module_tree_warns_not_refuses(disks: dict[str, Path], tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    code, stderr = convert(disks["nomods"], tmp_path / "out", "-p", "vmware-sparse")
    assert code == 0, stderr
    assert "no guest kernel modules found; cannot check the mptspi driver" in caplog.text


def test_datasource_rule_is_judged_per_declared_cloud() -> None:
    """[ Ec2, None ] on kvm: refused for a cloud that declares a config drive only (naming it), silent
    for one that declares the metadata service, a warning (once) where a cloud declares nothing."""
    from imgpipe import profiles
    from imgpipe.guest.policy import refuse
    from imgpipe.guest.facts import CloudInit, Fact, GuestFacts

    listed = Fact(["Ec2", "None"], "root /etc/cloud/cloud.cfg.d/99.cfg")
    facts = GuestFacts(cloud_init=CloudInit(installed=Fact(True, "root /usr/bin/cloud-init"), datasource_list=listed))
    kvm = profiles.load_all()["kvm"]
    verdict = refuse.check(Path("ec2.qcow2"), facts, kvm, dict(kvm.properties),
                           [("drive-only", frozenset({"config-drive"})), ("both", frozenset({"config-drive",
                            "metadata-service"})), ("plain", None), ("other", None)])
    about = [r for r in verdict.refusals if "datasource_list" in r]
    assert len(about) == 1 and about[0].startswith("ec2.qcow2: profile kvm on cloud drive-only: cloud-init "
                                                   "datasource_list [Ec2, None]")
    assert about[0].endswith("which kvm on a cloud declaring config drive does not offer: the guest will never "
                             "get its SSH key there; or --force-boot")
    warned = [w for w in verdict.warnings if "datasource_list" in w]
    assert len(warned) == 1 and "only through the metadata service" in warned[0]
    assert not [r for r in refuse.check(Path("ec2.qcow2"), facts, kvm, dict(kvm.properties)).refusals
                if "datasource_list" in r]
