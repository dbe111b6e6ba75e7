"""The in-process LVM2 reader against disks lvm2's own tools wrote.

Names, sizes and segment places are compared with `lvs`/`pvs` on the same disk, and LV bytes
with grub-fstest, whose LVM driver is independent of both lvm2 and this reader. Metadata text
written by hand covers what lvm cannot create without device-mapper (thin, raid) and the
hostile cases.
"""

from __future__ import annotations

import shutil
import struct
import time
from pathlib import Path

import lvm_disks as ld
import pytest

from imgpipe.errors import GuestInspectionError
from imgpipe.guest.fs import lvm
from imgpipe.guest.fs.ext import ExtBlocks

pytestmark = pytest.mark.skipif(not ld.HAVE_TOOLS, reason="needs root, lvm2, losetup, sfdisk, mkfs.ext4")
needs_grub = pytest.mark.skipif(shutil.which("grub-fstest") is None, reason="needs grub-fstest (grub-common)")

ROCKY = 'NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n'
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
MIB = ld.MIB


def _os_release(lv: lvm.LogicalVolume) -> bytes:
    return ExtBlocks(lv.read, lv.size, lv.evidence).read("/etc/os-release", 4096)


def _by_name(volumes: list[lvm.LogicalVolume]) -> dict[str, lvm.LogicalVolume]:
    return {v.name: v for v in volumes}


@pytest.fixture(scope="module")
def rocky(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """2 GiB GPT like Rocky 9's LVM image: bios boot, ESP, /boot, PV of VG rl with swap and root."""
    tmp = tmp_path_factory.mktemp("rocky")
    disk = tmp / "disk.raw"
    parts = ld.gpt(disk, 2048, [("biosboot", ld.BIOS_TYPE, 1), ("efi", ld.ESP_TYPE, 100),
                                ("boot", ld.LINUX_TYPE, 200), ("lvm", ld.LVM_TYPE, 1745)])
    boot = ld.ext4(tmp / "boot.img", 200 * MIB, "")
    with disk.open("r+b") as f:
        f.seek(parts[2].offset)
        f.write(boot.read_bytes())
    root = ld.ext4(tmp / "root.img", 1200 * MIB, ROCKY)
    first_pe, extent, segs = ld.rocky_vg(disk, parts[3], root, 1200)
    return {"disk": disk, "parts": parts, "segs": segs, "pe": (first_pe, extent)}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A root LV in two discontiguous segments (extended after another LV), plus zero and error LVs."""
    tmp = tmp_path_factory.mktemp("split")
    disk = tmp / "disk.raw"
    parts = ld.gpt(disk, 96, [("lvm", ld.LVM_TYPE, 64)])
    with ld.loops(disk, parts) as devices:
        ld.lvm(devices, "pvcreate", devices[0])
        ld.lvm(devices, "vgcreate", "-s", "1m", "vg2", devices[0])
        ld.lvm(devices, "lvcreate", "-an", "-Zn", "-L", "8M", "-n", "root", "vg2")
        ld.lvm(devices, "lvcreate", "-an", "-Zn", "-L", "4M", "-n", "other", "vg2")
        ld.lvm(devices, "lvextend", "-L", "+12M", "vg2/root")
        ld.lvm(devices, "lvcreate", "-an", "--type", "zero", "-L", "3M", "-n", "z", "vg2")
        ld.lvm(devices, "lvcreate", "-an", "--type", "error", "-L", "2M", "-n", "e", "vg2")
        first_pe, extent = ld.pe_start(devices, devices[0])
        segs = ld.segments(devices, "vg2")
        root = ld.ext4(tmp / "root.img", 20 * MIB, DEBIAN)
        ld.write_lv(disk, {devices[0]: parts[0]}, first_pe, extent, [s for s in segs if s.lv == "root"], root)
    return {"disk": disk, "part": parts[0], "segs": segs, "pe": (first_pe, extent), "tmp": tmp}


@pytest.fixture(scope="module")
def striped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One PV whose VG metadata (restored by vgcfgrestore) has an LV of two 64 KiB-chunk stripes on it:
    lvm itself only stripes over distinct PVs, but reads and reports this layout."""
    tmp = tmp_path_factory.mktemp("striped")
    disk = tmp / "disk.raw"
    parts = ld.gpt(disk, 64, [("lvm", ld.LVM_TYPE, 48)])
    with ld.loops(disk, parts) as devices:
        ld.lvm(devices, "pvcreate", devices[0])
        ld.lvm(devices, "vgcreate", "-s", "1m", "sv", devices[0])
        ld.lvm(devices, "lvcreate", "-an", "-Zn", "-L", "2M", "-n", "head", "sv")
        backup = tmp / "sv.txt"
        ld.lvm(devices, "vgcfgbackup", "-f", str(backup), "sv")
        text = backup.read_text()
        at = text.index("logical_volumes {") + len("logical_volumes {")
        data = ('\ndata {\nid = "aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"\nstatus = ["READ", "WRITE", "VISIBLE"]\n'
                'flags = []\nsegment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 16\n'
                'type = "striped"\nstripe_count = 2\nstripe_size = 128\nstripes = [\n"pv0", 20,\n"pv0", 5\n]\n}\n}\n')
        backup.write_text(text[:at] + data + text[at:])
        ld.lvm(devices, "vgcfgrestore", "-f", str(backup), "sv")
        first_pe, extent = ld.pe_start(devices, devices[0])
        segs = ld.segments(devices, "sv")
        image = ld.ext4(tmp / "data.img", 16 * MIB, ROCKY)
        ld.write_lv(disk, {devices[0]: parts[0]}, first_pe, extent, [s for s in segs if s.lv == "data"], image)
    return {"disk": disk, "part": parts[0], "segs": segs, "tmp": tmp}


def test_rocky_layout_matches_lvs_and_reads_os_release(rocky: dict) -> None:
    disk, parts = rocky["disk"], rocky["parts"]
    pv = parts[3]
    read = ld.window(disk, pv)
    assert lvm.is_physical_volume(read(0, 2048))
    assert not any(lvm.is_physical_volume(ld.window(disk, p)(0, 2048)) for p in parts[:3])
    reads: list[int] = []

    def counted(offset: int, length: int) -> bytes:
        reads.append(length)
        return read(offset, length)

    started = time.perf_counter()
    volumes, skipped = lvm.logical_volumes(counted, pv.size, "partition 4")
    listed = time.perf_counter()
    os_release = _os_release(_by_name(volumes)["root"])
    done = time.perf_counter()
    print(f"\n2 GiB Rocky-shaped disk: LV list {(listed - started) * 1000:.1f} ms, os-release through rl/root "
          f"{(done - listed) * 1000:.1f} ms; {len(reads)} reads, {sum(reads)} bytes")
    assert skipped == []
    assert {(v.vg, v.name, v.size) for v in volumes} == {("rl", s.lv, s.lv_size) for s in rocky["segs"]}
    assert _by_name(volumes)["root"].evidence == "partition 4 LVM2 PV, VG rl, LV root (linear, 1 segment)"
    assert os_release == ROCKY.encode()


@needs_grub
def test_rocky_os_release_agrees_with_grub(rocky: dict) -> None:
    pv = rocky["parts"][3]
    volumes, _ = lvm.logical_volumes(ld.window(rocky["disk"], pv), pv.size, "partition 4")
    assert _os_release(_by_name(volumes)["root"]) == ld.grub_cat(rocky["disk"], "(lvm/rl-root)/etc/os-release")


def test_segments_land_where_lvs_says(split: dict) -> None:
    disk, part = split["disk"], split["part"]
    first_pe, extent = split["pe"]
    volumes, skipped = lvm.logical_volumes(ld.window(disk, part), part.size, "disk.raw p1")
    found = _by_name(volumes)
    assert skipped == []
    assert {(v.name, v.size) for v in volumes} == {(s.lv, s.lv_size) for s in split["segs"]}
    root_segs = sorted((s for s in split["segs"] if s.lv == "root"), key=lambda s: s.start_pe)
    assert len(root_segs) == 2 and root_segs[0].ranges[0][2] + 1 != root_segs[1].ranges[0][1]  # discontiguous
    assert found["root"].evidence == "disk.raw p1 LVM2 PV, VG vg2, LV root (linear, 2 segments)"
    with disk.open("rb") as f:
        for seg in root_segs:
            for edge in (0, seg.size_pe * extent - 4096):  # first and last block of each segment
                f.seek(part.offset + first_pe + seg.ranges[0][1] * extent + edge)
                assert found["root"].read(seg.start_pe * extent + edge, 4096) == f.read(4096)
    assert _os_release(found["root"]) == DEBIAN.encode()


@needs_grub
def test_two_segment_lv_bytes_agree_with_grub(split: dict) -> None:
    part = split["part"]
    root = _by_name(lvm.logical_volumes(ld.window(split["disk"], part), part.size, "p1")[0])["root"]
    assert root.read(0, root.size) == ld.grub_lv(split["disk"], "vg2-root", root.size, split["tmp"] / "root.out")


def test_zero_and_error_segments(split: dict) -> None:
    part = split["part"]
    found = _by_name(lvm.logical_volumes(ld.window(split["disk"], part), part.size, "p1")[0])
    assert found["z"].read(MIB - 5, 10) == bytes(10) and found["z"].evidence.endswith("(zero, 1 segment)")
    with pytest.raises(GuestInspectionError, match="^p1: LV vg2/e: byte 0 is in an error segment"):
        found["e"].read(0, 512)
    with pytest.raises(GuestInspectionError, match="outside the LV"):
        found["root"].read(found["root"].size - 10, 11)


def test_striped_lv_on_one_pv(striped: dict) -> None:
    part = striped["part"]
    (seg,) = [s for s in striped["segs"] if s.lv == "data"]
    assert (seg.segtype, seg.stripe_size, [r[1:] for r in seg.ranges]) == ("striped", 65536, [(20, 27), (5, 12)])
    volumes, skipped = lvm.logical_volumes(ld.window(striped["disk"], part), part.size, "p1")
    data = _by_name(volumes)["data"]
    assert skipped == [] and data.size == seg.lv_size
    assert data.evidence == "p1 LVM2 PV, VG sv, LV data (striped, 1 segment)"
    assert _os_release(data) == ROCKY.encode()


@needs_grub
def test_striped_lv_bytes_agree_with_grub(striped: dict) -> None:
    part = striped["part"]
    data = _by_name(lvm.logical_volumes(ld.window(striped["disk"], part), part.size, "p1")[0])["data"]
    reference = ld.grub_lv(striped["disk"], "sv-data", data.size, striped["tmp"] / "data.out")
    assert data.read(0, data.size) == reference
    assert data.read(65536 - 100, 300000) == reference[65536 - 100:65536 - 100 + 300000]  # across chunks
    assert ld.grub_cat(striped["disk"], "(lvm/sv-data)/etc/os-release") == ROCKY.encode()


def test_lv_striped_over_two_pvs_is_skipped_with_a_note(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    parts = ld.gpt(disk, 96, [("a", ld.LVM_TYPE, 40), ("b", ld.LVM_TYPE, 40)])
    with ld.loops(disk, parts) as devices:
        for device in devices:
            ld.lvm(devices, "pvcreate", device)
        ld.lvm(devices, "vgcreate", "-s", "1m", "st", *devices)
        ld.lvm(devices, "lvcreate", "-an", "-Zn", "-i", "2", "-I", "64k", "-L", "16M", "-n", "wide", "st")
        ld.lvm(devices, "lvcreate", "-an", "-Zn", "-L", "4M", "-n", "solo", "st", devices[0])
        segs = ld.segments(devices, "st")
    assert {s.lv: len(s.ranges) for s in segs} == {"wide": 2, "solo": 1}
    first, _ = lvm.logical_volumes(ld.window(disk, parts[0]), parts[0].size, "p1")
    second, notes = lvm.logical_volumes(ld.window(disk, parts[1]), parts[1].size, "p2")
    assert [(v.name, v.size) for v in first] == [("solo", 4 * MIB)] and second == []
    assert notes == ["p2: VG st, LV wide: extents on other PVs (pv0)", "p2: VG st, LV solo: extents on other PVs (pv0)"]


def test_wrapped_metadata_buffer(tmp_path: Path) -> None:
    """Enough renames on a small metadata area that lvm's circular buffer wraps."""
    disk = tmp_path / "disk.raw"
    parts = ld.gpt(disk, 40, [("lvm", ld.LVM_TYPE, 32)])
    with ld.loops(disk, parts) as devices:
        ld.lvm(devices, "pvcreate", "--metadatasize", "32k", "--dataalignment", "64k", devices[0])
        ld.lvm(devices, "vgcreate", "-s", "1m", "wv", devices[0])
        ld.lvm(devices, "lvcreate", "-an", "-Zn", "-L", "2M", "-n", "lv0", "wv")
        for i in range(1, 80):
            ld.lvm(devices, "lvrename", "wv", f"lv{i - 1}", f"lv{i}")
            if _wraps(disk, parts[0]):
                break
        segs = ld.segments(devices, "wv")
    assert _wraps(disk, parts[0])
    volumes, _ = lvm.logical_volumes(ld.window(disk, parts[0]), parts[0].size, "p1")
    assert [(v.name, v.size) for v in volumes] == [(s.lv, s.lv_size) for s in segs]


def _wraps(disk: Path, part: ld.Part) -> bool:
    header = ld.window(disk, part)(4096, 512)
    (size,) = struct.unpack_from("<Q", header, 32)
    offset, length = struct.unpack_from("<QQ", header, 40)
    return offset + length > size


class _Image:
    """A PV held in memory (its first MiB; the rest reads as zeros), with metadata text rewritten at will."""

    def __init__(self, split: dict) -> None:
        part = split["part"]
        self.size = part.size
        self.data = bytearray(ld.window(split["disk"], part)(0, MIB))
        self.mda = 4096
        (self.mda_size,) = struct.unpack_from("<Q", self.data, self.mda + 32)
        offset, length = struct.unpack_from("<QQ", self.data, self.mda + 40)
        self.text = self.data[self.mda + offset:self.mda + offset + length].rstrip(b"\0").decode()

    def put(self, text: str | bytes, offset: int = 512, size: int | None = None) -> _Image:
        raw = (text.encode() if isinstance(text, str) else text) + b"\0"
        self.data[self.mda + 512:self.mda + self.mda_size] = bytes(self.mda_size - 512)
        self.data[self.mda + 512:self.mda + 512 + len(raw)] = raw[:self.mda_size - 512]
        struct.pack_into("<QQII", self.data, self.mda + 40, offset, len(raw) if size is None else size,
                         lvm.lvm_crc(raw), 0)
        struct.pack_into("<I", self.data, self.mda, lvm.lvm_crc(bytes(self.data[self.mda + 4:self.mda + 512])))
        return self

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length]).ljust(length, b"\0")

    def volumes(self) -> tuple[list[lvm.LogicalVolume], list[str]]:
        return lvm.logical_volumes(self.read, self.size, "p9")


def test_hand_written_metadata_reads_like_lvm_wrote_it(split: dict) -> None:
    image = _Image(split)
    expected = {(v.name, v.size) for v in image.volumes()[0]}
    assert {(v.name, v.size) for v in image.put(image.text).volumes()[0]} == expected


def test_thin_and_raid_lvs_are_skipped_with_notes(split: dict) -> None:
    image = _Image(split)
    at = image.text.index("logical_volumes {") + len("logical_volumes {")
    extra = ('pool {\nstatus = ["READ", "WRITE", "VISIBLE"]\nsegment_count = 1\nsegment1 {\nstart_extent = 0\n'
             'extent_count = 4\ntype = "thin-pool"\n}\n}\n'
             'mirrored {\nstatus = ["READ", "WRITE", "VISIBLE"]\nsegment_count = 1\nsegment1 {\nstart_extent = 0\n'
             'extent_count = 4\ntype = "raid1"\n}\n}\n'
             'pool_tdata {\nstatus = ["READ", "WRITE"]\nsegment_count = 1\nsegment1 {\nstart_extent = 0\n'
             'extent_count = 4\ntype = "thin"\n}\n}\n')
    volumes, notes = image.put(image.text[:at] + extra + image.text[at:]).volumes()
    assert "root" in _by_name(volumes) and "pool" not in _by_name(volumes)
    assert notes == ["p9: VG vg2, LV pool: thin-pool segments are not read",
                     "p9: VG vg2, LV mirrored: raid1 segments are not read"]


def _hostile(text: str) -> list[tuple[str, str, str]]:
    """(case, metadata text, expected message part) built from a real VG's metadata text."""
    seg = text.index("stripes = [", text.index("root {"))
    return [
        ("truncated", text[:len(text) // 2], "unbalanced braces|ends early|unparsable"),
        ("deep nesting", "vg2 {\n" + "a {\n" * 100000, "nests deeper than 16"),
        ("long list", "x = [" + "1, " * 200000 + "]\n" + text, "longer than 1024"),
        ("over 1 MiB", "x = [" + "1, " * 400000 + "]\n" + text, "raw_locn.size is [0-9]+: metadata text"),
        ("huge number", text.replace("extent_size = 2048", "extent_size = 99999999999999999999"),
         "extent_size = 99999999999999999999"),
        ("absurd digits", text.replace("extent_size = 2048", "extent_size = " + "9" * 5000), "bad value"),
        ("pe_count past the PV", text.replace("pe_count = ", "pe_count = 4000"), "end past the PV"),
        ("extent past pe_count", text[:seg] + 'stripes = [\n"pv0", 60\n]' + text[text.index("]", seg) + 1:],
         "past pv0's"),
        ("overlap", text[:seg] + 'stripes = [\n"pv0", 8\n]' + text[text.index("]", seg) + 1:], "share extent"),
        ("unterminated string", text[:text.index('id = "') + 8], "unparsable metadata text"),
        ("nested list", text.replace('flags = []', 'flags = [[1]]', 1), "bad value"),
        ("gap between segments", text.replace("start_extent = 8", "start_extent = 9"), "starts at extent 9"),
        ("segment_count lies", text.replace("segment_count = 2", "segment_count = 200000"), "segment_count"),
        ("stripes not dividing", text.replace("stripe_count = 1", "stripe_count = 3", 1), "stripe|divide"),
        ("uuid not in VG", text.replace(text[text.index('id = "', text.index("pv0 {")) + 6:][:6], "zzzzzz", 1),
         "lists this PV 0 times"),
    ]


@pytest.mark.parametrize("case", range(15))
def test_hostile_metadata_text_fails_quickly(split: dict, case: int) -> None:
    image = _Image(split)
    name, text, expected = _hostile(image.text)[case]
    image.put(text)
    started = time.perf_counter()
    with pytest.raises(GuestInspectionError, match=rf"^p9: corrupt LVM2 metadata: .*({expected})") as err:
        image.volumes()
    assert time.perf_counter() - started < 2, name
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("where", "expected"), [
    ("outside the area", "raw_locn.offset is [0-9]+: the metadata text must start past the header"),
    ("too large", "raw_locn.size is [0-9]+: metadata text is 1 byte to 1 MiB"),
    ("bad text checksum", "fails its checksum"),
    ("bad header checksum", "bad metadata area header"),
    ("bad label checksum", "fails its checksum"),
    ("area past the PV", "mda_offset is 4096: the metadata area must end inside the PV's"),
])
def test_hostile_locations_fail(split: dict, where: str, expected: str) -> None:
    image = _Image(split).put(_Image(split).text)
    if where == "outside the area":
        image.put(image.text, offset=image.mda_size + 4096)
    elif where == "too large":
        image.put(image.text, size=1 << 40)
    elif where == "bad text checksum":
        image.data[image.mda + 600] ^= 1
    elif where == "bad header checksum":
        image.data[image.mda + 30] ^= 1
    elif where == "bad label checksum":
        image.data[512 + 40] ^= 1
    else:
        struct.pack_into("<Q", image.data, 512 + 32 + 40 + 32 + 8, image.size)  # the metadata area's size
        image.data[512 + 16:512 + 20] = struct.pack("<I", lvm.lvm_crc(bytes(image.data[512 + 20:1024])))
    with pytest.raises(GuestInspectionError, match=rf"^p9: corrupt LVM2 metadata: .*{expected}"):
        image.volumes()


def test_not_a_pv(split: dict) -> None:
    assert not lvm.is_physical_volume(bytes(2048))
    label = bytearray(ld.window(split["disk"], split["part"])(0, 2048))
    assert lvm.is_physical_volume(bytes(label))
    label[512 + 24:512 + 32] = b"LVM1 001"
    assert not lvm.is_physical_volume(bytes(label))
    with pytest.raises(GuestInspectionError, match="^p9: corrupt LVM2 metadata: no LVM2 label"):
        lvm.logical_volumes(lambda o, n: bytes(n), 1 << 30, "p9")
