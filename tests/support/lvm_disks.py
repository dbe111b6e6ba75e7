"""Real LVM2 disks for the guest LVM tests.

lvm2's own tools write the PV, VG and LV metadata on loop devices over sparse files. This
machine has no device-mapper, so every lvm command runs with --driverloaded n and LVs are never
activated; filesystem images are written straight to the extents `lvs` reports. grub-fstest,
which has its own LVM reader, reads the LVs back as a second reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
LVM_TYPE = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_TYPE = "21686148-6449-6E6F-744E-656564454649"
LVM_CONFIG = ("activation { udev_sync=0 udev_rules=0 } devices { obtain_device_list_from_udev=0 } "
              "backup { backup=0 archive=0 }")
HAVE_TOOLS = os.geteuid() == 0 and all(shutil.which(t) for t in ("lvm", "losetup", "sfdisk", "mkfs.ext4"))


@dataclass(frozen=True)
class Part:
    offset: int
    size: int


@dataclass(frozen=True)
class Segment:
    lv: str
    lv_size: int
    start_pe: int
    size_pe: int
    segtype: str
    stripe_size: int
    ranges: tuple[tuple[str, int, int], ...]  # (device, first PE, last PE) per stripe


def gpt(disk: Path, size_mib: int, parts: list[tuple[str, str, int]]) -> list[Part]:
    """A sparse disk with a GPT of (name, type, MiB) partitions starting at 1 MiB, in order."""
    with disk.open("wb") as f:
        f.truncate(size_mib * MIB)
    lines, start, out = ["label: gpt"], MIB, []
    for name, kind, mib in parts:
        lines.append(f"start={start // 512}, size={mib * 2048}, type={kind}, name={name}")
        out.append(Part(start, mib * MIB))
        start += mib * MIB
    subprocess.run(["sfdisk", "-q", str(disk)], input="\n".join(lines).encode(), check=True)
    return out


@contextmanager
def loops(disk: Path, parts: list[Part]) -> Iterator[list[str]]:
    """One loop device per partition, detached again whatever happens."""
    devices: list[str] = []
    try:
        for part in parts:
            devices.append(subprocess.run(
                ["losetup", "-f", "--show", "-o", str(part.offset), "--sizelimit", str(part.size), str(disk)],
                check=True, capture_output=True, text=True).stdout.strip())
        yield devices
    finally:
        for device in devices:
            subprocess.run(["losetup", "-d", device], check=False)


def lvm(devices: list[str], *args: str) -> str:
    """One lvm command that sees only `devices` and never talks to device-mapper."""
    seen = [a for d in devices for a in ("--devices", d)]
    proc = subprocess.run(["lvm", *args, "--config", LVM_CONFIG, "--driverloaded", "n", *seen], check=False,
                          capture_output=True, text=True, env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"})
    assert proc.returncode == 0, f"lvm {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def pe_start(devices: list[str], device: str) -> tuple[int, int]:
    """(first PE's byte offset in the PV, extent size in bytes), as pvs reports them."""
    rows = _report(lvm(devices, "pvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                       "-o", "pv_name,pe_start,vg_extent_size", device), "pv")
    return int(rows[0]["pe_start"]), int(rows[0]["vg_extent_size"])


def segments(devices: list[str], vg: str) -> list[Segment]:
    rows = _report(lvm(devices, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                       "lv_name,lv_size,seg_start_pe,seg_size_pe,segtype,stripe_size,seg_pe_ranges", vg), "lv")
    out = []
    for row in rows:
        ranges = []
        for item in row["seg_pe_ranges"].split():
            dev, span = item.rsplit(":", 1)
            first, last = span.split("-")
            ranges.append((dev, int(first), int(last)))
        out.append(Segment(row["lv_name"], int(row["lv_size"]), int(row["seg_start_pe"]), int(row["seg_size_pe"]),
                           row["segtype"], int(row["stripe_size"]), tuple(ranges)))
    return out


def write_lv(disk: Path, parts: dict[str, Part], first_pe: int, extent: int, segs: list[Segment],
             image: Path) -> None:
    """Write `image` as the LV's content at the physical places lvs says its extents are.

    Striped segments follow dm-stripe's chunk order (chunk i goes to stripe i % n); grub-fstest
    reading the result back is what checks that order, not this function.
    """
    with image.open("rb") as src, disk.open("r+b") as dst:
        for seg in sorted(segs, key=lambda s: s.start_pe):
            stripes = len(seg.ranges)
            chunk = seg.stripe_size if stripes > 1 else seg.size_pe * extent
            for index in range(seg.size_pe * extent // chunk):
                row, stripe = divmod(index, stripes)
                dev, first, _ = seg.ranges[stripe]
                src.seek(seg.start_pe * extent + index * chunk)
                data = src.read(chunk)
                if data.strip(b"\0"):
                    dst.seek(parts[dev].offset + first_pe + first * extent + row * chunk)
                    dst.write(data)


def rocky_vg(disk: Path, part: Part, root: Path, root_mib: int) -> tuple[int, int, list[Segment]]:
    """Rocky 9's layout on one PV: VG rl with swap, then root (filled with the `root` image);
    returns (first PE, extent size, every segment of the VG)."""
    with loops(disk, [part]) as devices:
        lvm(devices, "pvcreate", devices[0])
        lvm(devices, "vgcreate", "rl", devices[0])
        lvm(devices, "lvcreate", "-an", "-Zn", "-L", "256M", "-n", "swap", "rl")
        lvm(devices, "lvcreate", "-an", "-Zn", "-L", f"{root_mib}M", "-n", "root", "rl")
        first_pe, extent = pe_start(devices, devices[0])
        segs = segments(devices, "rl")
        write_lv(disk, {devices[0]: part}, first_pe, extent, [s for s in segs if s.lv == "root"], root)
    return first_pe, extent, segs


def ext4(image: Path, size: int, os_release: str) -> Path:
    """An ext4 image of `size` bytes holding /etc/os-release and a little more."""
    tree = image.parent / (image.name + ".tree")
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text(os_release)
    (tree / "etc" / "fstab").write_text("/dev/mapper/rl-root / ext4 defaults 0 0\n")
    (tree / "usr").mkdir()
    (tree / "usr" / "blob").write_bytes(os.urandom(3 * MIB))
    with image.open("wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True)
    return image


def grub_cat(disk: Path, path: str) -> bytes:
    """A file read by grub-fstest's own LVM and ext2 drivers, e.g. '(lvm/rl-root)/etc/os-release'."""
    return subprocess.run(["grub-fstest", str(disk), "cat", path], check=True, capture_output=True).stdout


def grub_lv(disk: Path, lv: str, size: int, out: Path) -> bytes:
    """An LV's raw bytes as grub-fstest maps them (`vg-lv`, the first `size` bytes)."""
    subprocess.run(["grub-fstest", str(disk), "cp", f"(lvm/{lv})0+{size // 512}", str(out)], check=True,
                   capture_output=True)
    return out.read_bytes()


def window(disk: Path, part: Part) -> Callable[[int, int], bytes]:
    """read(offset, length) over one partition of a raw disk file."""
    def read(offset: int, length: int) -> bytes:
        with disk.open("rb") as f:
            f.seek(part.offset + offset)
            return f.read(length)

    return read


def _report(out: str, kind: str) -> list[dict[str, str]]:
    return json.loads(out)["report"][0][kind]
