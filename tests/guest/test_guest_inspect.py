"""Guest inspection through the real CLI on synthetic disks (sfdisk, mkfs -d, mtools)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import guest_disks as gd
import pytest
from imgpipe_dev import sample_disk
from typer.testing import CliRunner

from imgpipe import errors
from imgpipe.cli import app
from imgpipe.cli.base import EXIT_CODES

runner = CliRunner()


def inspect(path: Path) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    data = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, data, result.stderr


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("guests")
    pe_aa64 = sample_disk.PE_X86_64[:68] + (0xAA64).to_bytes(2, "little")
    variants = {
        "uefi": gd.Guest(),
        "bios": gd.Guest(loaders={}, bios=True, os_release="ubuntu2204", agent=True),
        "hybrid": gd.Guest(bios=True, loaders={"EFI/BOOT/BOOTX64.EFI": sample_disk.PE_X86_64,
                                               "EFI/debian/shimx64.efi": sample_disk.PE_X86_64}),
        "none": gd.Guest(loaders={"EFI/BOOT/README.TXT": b"not a loader"}),
        "arm": gd.Guest(loaders={"EFI/BOOT/BOOTAA64.EFI": pe_aa64},
                        elf=sample_disk.ELF_X86_64[:18] + (0xB7).to_bytes(2, "little") + sample_disk.ELF_X86_64[20:]),
        "msdata": gd.Guest(root_type=gd.MS_BASIC_DATA, os_release="rhel9"),
        "nomods": gd.Guest(modules=()),
        "builtin": gd.Guest(modules=(), builtin=("block/virtio_blk.ko",)),
        "corrupt": gd.Guest(corrupt=True),
    }
    return {name: gd.build(base / f"{name}.qcow2", g) for name, g in variants.items()}


def test_uefi_only_disk(disks: dict[str, Path]) -> None:
    code, data, _ = inspect(disks["uefi"])
    assert code == 0
    guest = data["guest"]
    assert guest["boot_paths"] == ["uefi"] and guest["bios"] is None
    assert guest["uefi_loaders"][0]["value"] == {"path": "EFI/BOOT/BOOTX64.EFI", "architecture": "x86_64"}
    assert "partition 1 (ESP)" in guest["uefi_loaders"][0]["evidence"]
    assert guest["os_release"]["value"] == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian",
                                            "VERSION_ID": "12"}
    assert guest["init"]["value"] == "/sbin/init" and guest["guest_agent"] is None
    assert guest["root"]["value"] == {"partition": 3, "filesystem": "ext4", "found_by": "type"}
    assert set(guest["drivers"]["value"]) >= {"virtio_blk", "mptspi", "hv_storvsc", "vmw_pvscsi"}


def test_bios_only_disk_and_elf_architecture(disks: dict[str, Path]) -> None:
    guest = inspect(disks["bios"])[1]["guest"]
    assert guest["boot_paths"] == ["bios"]
    assert "GRUB" in guest["bios"]["evidence"] and "BIOS boot partition 2" in guest["bios"]["evidence"]
    assert guest["architecture"]["value"] == "x86_64" and "ELF e_machine" in guest["architecture"]["evidence"]
    assert guest["guest_agent"]["value"] == "/usr/sbin/qemu-ga"


def test_hybrid_names_every_loader(disks: dict[str, Path]) -> None:
    guest = inspect(disks["hybrid"])[1]["guest"]
    assert guest["boot_paths"] == ["uefi", "bios"]
    assert [f["value"]["path"] for f in guest["uefi_loaders"]] == ["EFI/BOOT/BOOTX64.EFI", "EFI/debian/shimx64.efi"]


def test_esp_without_loaders_is_no_boot_path(disks: dict[str, Path]) -> None:
    guest = inspect(disks["none"])[1]["guest"]
    assert guest["boot_paths"] == [] and guest["uefi_loaders"] == []


def test_aarch64_from_the_loader(disks: dict[str, Path]) -> None:
    data = inspect(disks["arm"])[1]
    assert data["guest"]["architecture"]["value"] == "aarch64"
    assert data["derived_properties"]["kvm"]["architecture"]["value"] == "aarch64"


def test_untyped_root_found_by_signature(disks: dict[str, Path]) -> None:
    guest = inspect(disks["msdata"])[1]["guest"]
    assert guest["root"]["value"] == {"partition": 3, "filesystem": "ext4", "found_by": "signature"}
    assert guest["os_release"]["value"]["ID"] == "rhel"


def test_module_tree_absent_or_builtin(disks: dict[str, Path]) -> None:
    guest = inspect(disks["nomods"])[1]["guest"]
    assert guest["drivers"] is None
    assert any("no kernel module tree" in note for note in guest["unchecked"])
    built = inspect(disks["builtin"])[1]["guest"]["drivers"]["value"]
    assert list(built) == ["virtio_blk"] and "modules.builtin" in built["virtio_blk"]


def test_corrupt_filesystem_is_exit_20_one_line(disks: dict[str, Path]) -> None:
    result = runner.invoke(app, ["inspect", str(disks["corrupt"])])
    assert result.exit_code == EXIT_CODES[errors.GuestInspectionError] == 20
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "partition 3: corrupt ext filesystem" in lines[0]
    assert "Traceback" not in result.output


def test_empty_xfs_and_bare_ntfs_say_what_was_not_found(tmp_path: Path) -> None:
    xfs = inspect(gd.build(tmp_path / "xfs.qcow2", gd.Guest(fs="xfs")))[1]["guest"]
    assert xfs["root"]["value"]["filesystem"] == "xfs" and xfs["os_release"] is None
    assert any("no filesystem holds /etc/os-release" in note for note in xfs["unchecked"])
    ntfs = inspect(gd.build(tmp_path / "ntfs.qcow2", gd.Guest(fs="ntfs", root_type=gd.MS_BASIC_DATA)))[1]["guest"]
    assert ntfs["root"] is None and ntfs["os_type"] is None  # NTFS without Windows/System32


def test_hostile_symlinks_stay_inside_the_guest(tmp_path: Path) -> None:
    """A link loop ends, and an absolute link resolves in the guest, never on the host."""
    g = gd.Guest(os_release=None, init=False,
                 links={"etc/os-release": "os-release", "sbin/init": "/etc/hostname"})
    code, data, stderr = inspect(gd.build(tmp_path / "links.qcow2", g))
    assert code == 0, stderr
    assert data["guest"]["os_release"] is None and data["guest"]["init"] is None


def test_bare_filesystem_is_read_as_the_root(tmp_path: Path) -> None:
    gd.build(tmp_path / "disk.qcow2", gd.Guest())  # its root.img is the bare filesystem
    bare = tmp_path / "rootfs.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "disk.qcow2.d" / "root.img"),
                    str(bare)], check=True)
    guest = inspect(bare)[1]["guest"]
    assert guest["root"]["value"] == {"partition": 0, "filesystem": "ext4", "found_by": "signature"}
    assert guest["os_release"]["value"]["ID"] == "debian" and guest["boot_paths"] == []
