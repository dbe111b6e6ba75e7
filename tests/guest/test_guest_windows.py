"""Windows guests on real NTFS volumes (mkntfs, filled through ntfs-3g's FUSE mount), read by
NtfsTree and windows.py, and compared with ntfsls/ntfscat/hivexget on the same images."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import regf_writer as rw
import windows_fixture as wf

from imgpipe.errors import GuestInspectionError, OverBudgetError
from imgpipe.guest import windows
from imgpipe.guest.fs import ntfs, tree
from imgpipe.guest.fs.ntfs import NtfsTree

pytestmark = pytest.mark.skipif(not (ntfs.available() and shutil.which("mkntfs") and os.path.exists("/dev/fuse")),
                                reason="needs ntfs-3g and /dev/fuse")

LABEL = "partition 2"
SERVER_2022 = wf.Windows("Windows Server 2022 Datacenter", "ServerDatacenter", "Server", "20348", "21H2",
                         drivers={"viostor": 0, "netkvm": 3, "vioscsi": 4})
GUESTS = {
    "2022": SERVER_2022,
    "2019": wf.Windows("Windows Server 2019 Standard", "ServerStandard", "Server", "17763", release_id="1809",
                       drivers={"LSI_SAS": 0, "E1G60": 3}),
    "11": wf.Windows("Windows 10 Pro", "Professional", "Client", "22631", "23H2", drivers={"netkvm": 3}),
    "2016": wf.Windows("Windows Server 2016 Datacenter", "ServerDatacenter", "Server Core", "14393",
                       release_id="1607", drivers={"pvscsi": 0, "vmxnet3ndis6": 3}, current=2),
    "2025": wf.Windows("Windows Server 2025 Datacenter", "ServerDatacenter", "Server", "26100", "24H2",
                       drivers={"viostor": 0, "vioscsi": 0, "netkvm": 3}),
    "2012r2": wf.Windows("Windows Server 2012 R2 Standard", "ServerStandard", "Server", "9600",
                         legacy_version=True, drivers={"storvsc": 0, "netvsc": 3}),
}


def hivexget(hive: bytes, tmp: Path, key: str, value: str) -> str:
    """hivex (libhivex-bin), an independent regf reader, as the oracle for the hives we write."""
    path = tmp / "oracle.hive"
    path.write_bytes(hive)
    return subprocess.run(["hivexget", str(path), key, value], check=True, capture_output=True,
                          text=True).stdout.strip()


def ntfsls(image: Path, path: str) -> list[str]:
    out = subprocess.run(["ntfsls", "-f", "-p", path, str(image)], check=True, capture_output=True, text=True).stdout
    return sorted(n for n in out.splitlines() if n not in (".", ".."))


@pytest.fixture(scope="module")
def host_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    files = {"Windows/System32/drivers/etc/hosts": b"127.0.0.1 localhost\r\n",
             "Windows/System32/config/SOFTWARE": os.urandom(3 << 20),  # larger than any pipe buffer
             "Windows/Temp/empty.log": b"",
             "Users/Öffentlich/Desktop/ünï cödé.txt": "ünï".encode(),
             "Program Files/Cloudbase Solutions/Cloudbase-Init/conf/readme": b"x" * 5000}
    image = wf.ntfs_volume(tmp_path_factory.mktemp("ntfs") / "tree.img", files)
    with wf.mounted(image) as mnt:
        os.mkdir(mnt / "Windows" / "Junction")
        target = "\\??\\C:\\Windows".encode("utf-16-le")
        body = struct.pack("<HHHH", 0, len(target), len(target) + 2, 0) + target + b"\0\0" + b"\0\0"
        os.setxattr(mnt / "Windows" / "Junction", "system.ntfs_reparse_data",
                    struct.pack("<IHH", 0xA0000003, len(body), 0) + body)
    return image, files


def test_tree_lists_and_reads_what_ntfsls_ntfscat_and_the_host_see(host_tree: tuple[Path, dict[str, bytes]]) -> None:
    image, files = host_tree
    guest = NtfsTree(image, LABEL)
    dirs = {str(Path(rel).parent) for rel in files} | {"."}
    for rel in sorted(dirs):
        path = "/" + rel.strip(".")
        expected = sorted({Path(f).relative_to(rel).parts[0] for f in files if Path(rel) in Path(f).parents}
                          | ({"Junction"} if path == "/Windows" else set()))
        assert sorted(guest.listdir(path)) == expected == ntfsls(image, path), path
    for rel, data in files.items():
        assert guest.lstat("/" + rel) == tree.Node("file")
        assert guest.read("/" + rel, 1 << 30) == data
        assert data == subprocess.run(["ntfscat", "-f", str(image), "/" + rel], capture_output=True, check=True).stdout
    assert guest.lstat("/") == guest.lstat("/Windows/System32") == tree.Node("dir")
    assert guest.lstat("/Windows/Junction") == tree.Node("other")  # a reparse point is not its $DATA
    assert guest.lstat("/Windows/nope") is None and guest.lstat("/nope/deeper") is None
    assert guest.listdir("/Windows/System32/drivers/etc/hosts") == []


def test_paths_are_case_insensitive_as_on_windows(host_tree: tuple[Path, dict[str, bytes]]) -> None:
    image, files = host_tree
    guest = NtfsTree(image, LABEL)
    assert guest.real("/WINDOWS/system32/CONFIG/software") == "/Windows/System32/config/SOFTWARE"
    assert guest.real("/users/ÖFFENTLICH/desktop/ÜNÏ CÖDÉ.TXT") == "/Users/Öffentlich/Desktop/ünï cödé.txt"
    assert tree.read(guest, "/windows/SYSTEM32/Drivers/ETC/HOSTS") == (  # tree.resolve keeps the asked spelling
        "/windows/SYSTEM32/Drivers/ETC/HOSTS", files["Windows/System32/drivers/etc/hosts"])
    assert ntfs.windows(image, LABEL) is not None and ntfs.windows(image, LABEL).evidence == (  # type: ignore[union-attr]
        f"{LABEL} /Windows/System32")


def test_read_stops_at_the_limit(host_tree: tuple[Path, dict[str, bytes]]) -> None:
    image, files = host_tree
    guest = NtfsTree(image, LABEL)
    software = files["Windows/System32/config/SOFTWARE"]
    for limit in (0, 1, 4096, 65537, len(software) - 1, len(software)):
        assert guest.read("/Windows/System32/config/SOFTWARE", limit) == software[:limit]


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("windows")
    images = {}
    for name, w in GUESTS.items():
        files = (wf.windows_files(w, "WINDOWS/system32", "CONFIG") if name == "2016" else wf.windows_files(w))
        if name == "2022":
            files[wf.CLOUDBASE_CONF] = (
                "\ufeff[DEFAULT]\nusername=Admin\nmetadata_services=cloudbaseinit.metadata.services.configdrive."
                "ConfigDriveService,\n  cloudbaseinit.metadata.services.httpservice.HttpService\n"
                "logfile=%(x)s.log\n[openstack]\nmetadata_services=ignored\n").encode()
        if name == "2019":
            files[wf.CLOUDBASE_CONF] = b"[DEFAULT]\nusername=Admin\n"
        images[name] = wf.ntfs_volume(base / f"{name}.img", files)
    return images


@pytest.mark.parametrize("name", GUESTS)
def test_version_and_drivers_match_what_was_written(guests: dict[str, Path], name: str, tmp_path: Path) -> None:
    w = GUESTS[name]
    guest = NtfsTree(guests[name], LABEL)
    found = windows.read_windows(guest, LABEL, tmp_path)
    assert found is not None
    assert found.version.value == {
        "ProductName": w.product_name, "EditionID": w.edition_id, "InstallationType": w.installation_type,
        "CurrentBuildNumber": int(w.build), "UBR": w.ubr, "CurrentMajorVersionNumber": 6 if w.legacy_version else 10,
        "CurrentMinorVersionNumber": 3 if w.legacy_version else 0, "DisplayVersion": w.display_version,
        "ReleaseId": w.release_id}
    config = "/Windows/System32/config"  # as asked: 2016's is stored as WINDOWS/system32/CONFIG
    assert found.version.evidence == f"{LABEL} {config}/SOFTWARE \\Microsoft\\Windows NT\\CurrentVersion"
    assert found.drivers.evidence == f"{LABEL} {config}/SYSTEM \\ControlSet00{w.current}\\Services"
    assert found.drivers.value == {
        driver: {"start": start, "enabled": start < 4, "image_path": f"\\SystemRoot\\System32\\drivers\\{driver}.sys"}
        for driver, start in sorted(w.drivers.items())}
    assert list(tmp_path.iterdir()) == []  # the hive copies are gone
    software = guest.read(f"{config}/SOFTWARE", windows.HIVE_LIMIT)
    version = r"\Microsoft\Windows NT\CurrentVersion"
    assert hivexget(software, tmp_path, version, "ProductName") == found.version.value["ProductName"]
    assert hivexget(software, tmp_path, version, "CurrentBuildNumber") == str(found.version.value["CurrentBuildNumber"])


def test_server_2022_has_virtio_and_a_disabled_vioscsi(guests: dict[str, Path]) -> None:
    drivers = windows.read_windows(NtfsTree(guests["2022"], LABEL), LABEL)
    assert drivers is not None
    assert drivers.drivers.value["viostor"]["start"] == 0 and drivers.drivers.value["netkvm"]["enabled"]
    assert drivers.drivers.value["vioscsi"] == {"start": 4, "enabled": False,
                                                "image_path": "\\SystemRoot\\System32\\drivers\\vioscsi.sys"}
    without = windows.read_windows(NtfsTree(guests["2019"], LABEL), LABEL)
    assert without is not None and not {"viostor", "vioscsi", "netkvm"} & set(without.drivers.value)


def test_cloudbase_init_metadata_services(guests: dict[str, Path]) -> None:
    conf = "/Program Files/Cloudbase Solutions/Cloudbase-Init/conf/cloudbase-init.conf"
    listed = windows.cloudbase_init(NtfsTree(guests["2022"], LABEL), LABEL)
    assert listed == windows.Fact({"installed": True, "conf": conf, "metadata_services": [
        "cloudbaseinit.metadata.services.configdrive.ConfigDriveService",
        "cloudbaseinit.metadata.services.httpservice.HttpService"]},
        f"{LABEL} {conf} [DEFAULT] metadata_services")
    default = windows.cloudbase_init(NtfsTree(guests["2019"], LABEL), LABEL)
    assert default is not None and default.value == {"installed": True, "conf": conf, "metadata_services": None}
    assert windows.cloudbase_init(NtfsTree(guests["11"], LABEL), LABEL) is None


def test_a_volume_without_windows(tmp_path: Path) -> None:
    plain = wf.ntfs_volume(tmp_path / "data.img", {"data/readme.txt": b"hello"}, size=16 << 20)
    assert windows.read_windows(NtfsTree(plain, LABEL), LABEL) is None
    assert ntfs.windows(plain, LABEL) is None
    system32_only = wf.ntfs_volume(tmp_path / "nohive.img", {"Windows/System32/x.dll": b"MZ"}, size=16 << 20)
    with pytest.raises(GuestInspectionError, match="without config"):  # a Windows whose hives cannot be read
        windows.read_windows(NtfsTree(system32_only, LABEL), LABEL)


def _software(patch: str) -> bytes:
    """SERVER_2022's SOFTWARE hive damaged in one way."""
    root = rw.Key("ROOT")
    root.add(r"Microsoft\Windows NT\CurrentVersion", {"ProductName": "x"})
    root.add(r"Microsoft\Cryptography", {"MachineGuid": "x"})
    hive, layout = rw.build(root)
    data = bytearray(hive)
    microsoft, its_list = layout.nk["\\Microsoft"], layout.subkey_list["\\Microsoft"]
    if patch == "loop":  # Microsoft's subkey list names Microsoft itself
        struct.pack_into("<I", data, rw.BASE_BLOCK + its_list + 8, microsoft)
    elif patch == "list-is-the-key":  # the subkey list offset points at the key's own nk cell
        struct.pack_into("<I", data, rw.nk_field(microsoft, "subkeys_list_offset"), microsoft)
    elif patch == "fan-out":  # an ri of 65535 lh lists of 65535 entries: 4e9 keys to look at
        other = layout.nk["\\Microsoft\\Cryptography"]
        lh = b"lh" + struct.pack("<H", 0xFFFF) + struct.pack("<II", other, 0) * 0xFFFF
        with_lh, (lh_at,) = rw.append_cells(bytes(data), [lh])
        ri = b"ri" + struct.pack("<H", 0xFFFF) + struct.pack("<I", lh_at) * 0xFFFF
        with_ri, (ri_at,) = rw.append_cells(with_lh, [ri])
        data = bytearray(with_ri)
        struct.pack_into("<I", data, rw.nk_field(microsoft, "subkeys_list_offset"), ri_at)
    elif patch == "truncated":
        return bytes(data[: rw.BASE_BLOCK + 200])
    elif patch == "empty":
        return b""
    elif patch == "values":  # 2^32-1 values, a million of them the same vk
        key = layout.nk["\\Microsoft\\Windows NT\\CurrentVersion"]
        (values_list,) = struct.unpack_from("<I", data, rw.nk_field(key, "values_count") + 4)
        (vk,) = struct.unpack_from("<I", data, rw.BASE_BLOCK + values_list + 4)
        data, (many,) = rw.append_cells(bytes(data), [struct.pack("<I", vk) * (1 << 20)])
        data = bytearray(data)
        struct.pack_into("<II", data, rw.nk_field(key, "values_count"), 0xFFFFFFFF, many)
    return bytes(data)


HOSTILE = ["loop", "list-is-the-key", "fan-out", "values", "truncated", "empty"]


@pytest.mark.parametrize("patch", HOSTILE)
def test_hostile_software_hive_is_refused_quickly(patch: str, tmp_path: Path) -> None:
    files = wf.windows_files(SERVER_2022)
    files[f"{wf.CONFIG}/SOFTWARE"] = _software(patch)
    image = wf.ntfs_volume(tmp_path / "hostile.img", files, size=32 << 20)
    started = time.monotonic()
    with pytest.raises(GuestInspectionError) as caught:
        windows.read_windows(NtfsTree(image, LABEL), LABEL, tmp_path)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{LABEL} /Windows/System32/config/SOFTWARE: ")
    assert "corrupt registry hive" in message and "RecursionError" not in message
    assert elapsed < 30
    print(f"{patch}: {elapsed:.2f} s: {message}")


def test_corrupt_mft_is_refused(tmp_path: Path) -> None:
    image = wf.ntfs_volume(tmp_path / "mft.img", wf.windows_files(SERVER_2022), size=32 << 20)
    with image.open("r+b") as f:
        boot = f.read(512)
        cluster = struct.unpack_from("<H", boot, 11)[0] * boot[13]
        f.seek(struct.unpack_from("<q", boot, 0x30)[0] * cluster)
        f.write(b"\xa5" * 4096)
    started = time.monotonic()
    with pytest.raises(GuestInspectionError, match=r"^partition 2: corrupt NTFS filesystem: Failed to load \$MFT"):
        windows.read_windows(NtfsTree(image, LABEL), LABEL)
    assert time.monotonic() - started < 10


def test_unreadable_cloudbase_conf_is_refused(tmp_path: Path) -> None:
    files = {wf.CLOUDBASE_CONF: b"metadata_services=x\n"}  # no section header
    image = wf.ntfs_volume(tmp_path / "cb.img", files, size=16 << 20)
    with pytest.raises(GuestInspectionError, match="unreadable cloudbase-init configuration"):
        windows.cloudbase_init(NtfsTree(image, LABEL), LABEL)


def test_two_gib_volume_inspection_cost(tmp_path: Path) -> None:
    """Printed, not asserted: time and peak RSS of NtfsTree + read_windows on a 2 GiB volume."""
    root = rw.Key("ROOT")
    root.add(r"Microsoft\Windows NT\CurrentVersion", {"ProductName": "Windows Server 2022 Datacenter",
                                                       "CurrentBuildNumber": "20348"})
    for i in range(150_000):  # a SOFTWARE hive of realistic size
        root.add(f"Classes\\.ext{i // 1000}\\k{i}", {"Content Type": "application/x-" + "y" * 40, "n": i})
    software = rw.build(root)[0]
    files = wf.windows_files(SERVER_2022) | {f"{wf.CONFIG}/SOFTWARE": software}
    files |= {f"Windows/WinSxS/blob{i}.bin": os.urandom(16 << 20) for i in range(16)}
    image = wf.ntfs_volume(tmp_path / "two.img", files, size=2 << 30)
    script = ("import sys, time\nfrom pathlib import Path\nfrom imgpipe.guest import windows\n"
              "from imgpipe.guest.fs.ntfs import NtfsTree\nt = time.monotonic()\n"
              "f = windows.read_windows(NtfsTree(Path(sys.argv[1]), 'p'), 'p', Path(sys.argv[2]))\n"
              "assert f is not None and f.version.value['CurrentBuildNumber'] == 20348\n"
              # VmHWM, not ru_maxrss: Linux carries the forking pytest's peak across exec into ru_maxrss
              "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
              "print(f'{time.monotonic() - t:.2f} s, peak RSS {int(peak) >> 10} MiB')\n")
    done = subprocess.run([sys.executable, "-c", script, str(image), str(tmp_path)], check=False,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    print(f"\n2 GiB NTFS, SOFTWARE {len(software) >> 20} MiB: {out}", file=sys.__stderr__)
    assert out.endswith("MiB")


def test_a_hive_over_the_cap_is_refused_without_being_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = wf.windows_files(SERVER_2022)
    files[f"{wf.CONFIG}/SOFTWARE"] = b"regf" + bytes(3 << 20)
    image = wf.ntfs_volume(tmp_path / "big.img", files, size=32 << 20)
    monkeypatch.setattr(windows, "HIVE_LIMIT", 2 << 20)  # the real 200 MiB cap: the same path, a slower test
    with pytest.raises(OverBudgetError, match=rf"^{LABEL} /Windows/System32/config/SOFTWARE: registry hive "
                                              r"larger than 2\.0 MiB: refused$"):
        windows.read_windows(NtfsTree(image, LABEL), LABEL, tmp_path)
    assert not list(tmp_path.glob("hives-*"))  # the partial copy went with its temp dir


def test_a_hive_streams_to_its_file_byte_for_byte(tmp_path: Path) -> None:
    software = wf.software_hive(SERVER_2022)
    image = wf.ntfs_volume(tmp_path / "one.img", {f"{wf.CONFIG}/SOFTWARE": software}, size=16 << 20)
    dest = tmp_path / "SOFTWARE"
    assert NtfsTree(image, LABEL).copy(f"/{wf.CONFIG}/SOFTWARE", dest, 1 << 30) == len(software)
    assert dest.read_bytes() == software
    assert NtfsTree(image, LABEL).copy(f"/{wf.CONFIG}/SOFTWARE", dest, 1000) == 1000
    assert dest.read_bytes() == software[:1000]
