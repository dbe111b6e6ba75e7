"""The in-process FAT reader against mtools (the oracle) on real FAT12/16/32 volumes made by
mkfs.vfat and filled by mtools, then against the same volumes with their structures broken."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs import fat

FILES = {
    "EFI/BOOT/BOOTX64.EFI": b"MZ" + bytes(range(256)) * 40,  # 10 KiB: several clusters
    "EFI/debian/shimx64.efi": b"MZ shim " * 3000,
    "EFI/debian/grub.cfg": b"search --fs-uuid\n",
    "EFI/Microsoft/Boot/a very long file name, with spaces.efi": b"MZ" * 5,
    "EFI/empty.txt": b"",
    "startup.nsh": b"fs0:\\EFI\\BOOT\\BOOTX64.EFI\n",
}


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _volume(tmp_path: Path, bits: int, mib: int) -> Path:
    """FAT12 in 4 MiB needs 2 KiB clusters; FAT16 and FAT32 get 512-byte ones (long chains)."""
    image = tmp_path / f"fat{bits}.img"
    with image.open("wb") as f:
        f.truncate(mib << 20)
    _run("mkfs.vfat", "-F", str(bits), "-s", "4" if bits == 12 else "1", str(image))
    for path, blob in FILES.items():
        local = tmp_path / "blob"
        local.write_bytes(blob)
        parts = Path(path).parent.parts
        for i in range(1, len(parts) + 1):
            subprocess.run(["mmd", "-D", "s", "-i", str(image), "::/" + "/".join(parts[:i])], capture_output=True)
        _run("mcopy", "-o", "-i", str(image), str(local), f"::/{path}")
    return image


def _open(image: Path) -> fat.Fat:
    data = image.read_bytes()
    return fat.Fat(lambda offset, length: data[offset:offset + length], len(data), "esp")


@pytest.mark.parametrize(("bits", "mib"), [(12, 4), (16, 16), (32, 64)])
def test_listing_and_bytes_equal_mtools(tmp_path: Path, bits: int, mib: int) -> None:
    image = _volume(tmp_path, bits, mib)
    volume = _open(image)
    assert volume.bits == bits
    listed = {f.path: f for f in volume.files("EFI")}
    mdir = _run("mdir", "-i", str(image), "-/", "-b", "::/EFI").split("\n")
    oracle = {line.strip().removeprefix("::/") for line in mdir if line.strip() and not line.strip().endswith("/")}
    assert set(listed) == oracle == {p for p in FILES if p.startswith("EFI/")}
    for path, file in listed.items():
        assert volume.read(file, 1 << 20) == FILES[path]
        assert volume.read(file, 100, offset=7) == FILES[path][7:107]
    assert [f.path for f in volume.files("efi/DEBIAN")] == ["EFI/debian/shimx64.efi", "EFI/debian/grub.cfg"]
    assert volume.files("nowhere") == []
    found = volume.find("efi/boot/bootx64.efi")
    assert found is not None and found.path == "EFI/BOOT/BOOTX64.EFI"
    assert volume.read(found, 4096) == FILES["EFI/BOOT/BOOTX64.EFI"][:4096]
    assert volume.find("EFI/BOOT") is None and volume.find("EFI/nowhere/x.efi") is None


def _entry_offset(image: Path, name: bytes) -> int:
    data = image.read_bytes()
    at = data.find(name.ljust(11))
    assert at > 0 and at % 32 == 0
    return at


def _patch(image: Path, offset: int, blob: bytes) -> None:
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(blob)


def _fat_offset(image: Path) -> int:
    data = image.read_bytes()
    return int.from_bytes(data[14:16], "little") * int.from_bytes(data[11:13], "little")


def test_a_chain_that_loops_is_named(tmp_path: Path) -> None:
    image = _volume(tmp_path, 16, 16)
    entry = _entry_offset(image, b"BOOTX64 EFI")
    first = int.from_bytes(image.read_bytes()[entry + 26:entry + 28], "little")
    _patch(image, _fat_offset(image) + 2 * (first + 1), first.to_bytes(2, "little"))  # second -> first
    volume = _open(image)
    file = next(f for f in volume.files("EFI") if f.path.endswith("BOOTX64.EFI"))
    with pytest.raises(GuestInspectionError,
                       match=re.escape("esp /EFI/BOOT/BOOTX64.EFI: cluster chain loops at cluster ")):
        volume.read(file, 1 << 20)


def test_a_cluster_outside_the_volume_is_named(tmp_path: Path) -> None:
    image = _volume(tmp_path, 32, 64)
    entry = _entry_offset(image, b"BOOT       ")
    _patch(image, entry + 20, (0x0FFF).to_bytes(2, "little"))  # high word: far past the end
    with pytest.raises(GuestInspectionError, match=r"^esp /EFI/BOOT: cluster \d+ is outside the volume"):
        _open(image).files("EFI")


def test_a_directory_inside_itself_ends(tmp_path: Path) -> None:
    image = _volume(tmp_path, 12, 4)
    data = image.read_bytes()
    boot = _entry_offset(image, b"BOOT       ")
    efi_entry = _entry_offset(image, b"EFI        ")
    _patch(image, boot + 26, data[efi_entry + 26:efi_entry + 28])  # EFI/BOOT is EFI again
    with pytest.raises(GuestInspectionError, match=r"listed twice|nested deeper"):
        _open(image).files("")


def test_a_bad_boot_sector_is_one_error(tmp_path: Path) -> None:
    image = _volume(tmp_path, 16, 16)
    _patch(image, 13, b"\x03")  # 3 sectors per cluster
    with pytest.raises(GuestInspectionError, match=r"^esp: corrupt FAT filesystem: boot sector: impossible geometry"):
        _open(image)
    _patch(image, 13, b"\x01")
    _patch(image, 19, (0xFFFF).to_bytes(2, "little"))  # more sectors than the partition holds
    data = image.read_bytes()[:1 << 20]
    with pytest.raises(GuestInspectionError, match="do not fit"):
        fat.Fat(lambda offset, length: data[offset:offset + length], len(data), "esp")
