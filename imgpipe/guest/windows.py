r"""A Windows guest's version, edition, drivers and cloudbase-init, read from its registry hives
and files through a Tree (no mount, nothing from the guest run).

The hives are streamed out to a file (no larger than HIVE_LIMIT) and parsed with regipy, key by key along known paths: a
whole-hive walk would cost time on a real SOFTWARE hive and follow whatever loops a hostile
one holds. Every subkey and value regipy yields spends one step of a budget, under a deadline,
and a subkey list that leads back to a key on the path is refused, so any hive ends in bounded
time.
"""

from __future__ import annotations

import configparser
import functools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from imgpipe.errors import GuestInspectionError, OverBudgetError
from imgpipe.guest.facts import Fact
from imgpipe.guest.fs import tree
from imgpipe.guest.fs.ntfs import NtfsTree
from imgpipe.units import human_size

if TYPE_CHECKING:
    from regipy.registry import NKRecord

# A real SOFTWARE hive is 50-150 MiB; regipy holds the one it parses in memory, so this bounds
# a Windows inspection's memory.
HIVE_LIMIT = 200 << 20
CONF_LIMIT = 1 << 20
CONFIG = "/Windows/System32/config"
CURRENT_VERSION = r"\Microsoft\Windows NT\CurrentVersion"
# Storage and network drivers by service name: virtio (virtio-win), Hyper-V, VMware, and the
# Intel e1000 (E1G60: 82540EM, e1iexpress: 82574L e1000e) most hypervisors emulate.
DRIVERS = ("viostor", "vioscsi", "netkvm", "storvsc", "netvsc", "pvscsi", "LSI_SAS", "LSI_SCSI",
           "vmxnet3ndis6", "E1G60", "e1iexpress")
CLOUDBASE_DIRS = ("/Program Files/Cloudbase Solutions/Cloudbase-Init",
                  "/Program Files (x86)/Cloudbase Solutions/Cloudbase-Init")
_STEPS = 200_000  # subkeys and values regipy may yield per hive; a real lookup needs a few thousand
_SECONDS = 20.0
_TEXT = 256
_T = TypeVar("_T")


@dataclass(frozen=True)
class WindowsFacts:
    # Named as in the registry (the major/minor of an older CurrentVersion "6.3" as the newer DWORDs).
    version: Fact
    drivers: Fact  # service name -> {"start": 0-4, "enabled": start < 4, "image_path": str | None}


def read_windows(guest: NtfsTree, label: str, work: Path | None = None) -> WindowsFacts | None:
    """None when the volume has no Windows/System32; hives are copied to a temp dir under `work`."""
    if tree.listdir(guest, "/Windows/System32") is None:
        return None
    config = tree.listdir(guest, CONFIG)
    if config is None:
        raise GuestInspectionError(f"{guest.label}: Windows/System32 without config: no registry hives to read")
    with tempfile.TemporaryDirectory(dir=work, prefix="hives-") as tmp:
        software = _Hive.copy(guest, label, f"{config[0]}/SOFTWARE", Path(tmp) / "SOFTWARE")
        version = _version(software)
        del software
        system = _Hive.copy(guest, label, f"{config[0]}/SYSTEM", Path(tmp) / "SYSTEM")
        drivers = _drivers(system)
    return WindowsFacts(version, drivers)


def cloudbase_init(guest: tree.Tree, label: str) -> Fact | None:
    """cloudbase-init and the metadata services its [DEFAULT] metadata_services lists.

    metadata_services None means the option is absent: cloudbase-init then tries its built-in
    list (HttpService, ConfigDriveService, EC2Service, MaaSHttpService, CloudStack, OpenNebulaService).
    """
    home = next((d for d in CLOUDBASE_DIRS if tree.listdir(guest, d) is not None), None)
    if home is None:
        return None
    conf = tree.read(guest, f"{home}/conf/cloudbase-init.conf", CONF_LIMIT + 1)
    if conf is None:
        return Fact({"installed": True, "metadata_services": None, "conf": None}, f"{label} {home}")
    path, data = conf
    if len(data) > CONF_LIMIT:
        raise GuestInspectionError(f"{label}: {path} is larger than {CONF_LIMIT} bytes: refused")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(data.decode("utf-8-sig", errors="replace"), source=path)
    except configparser.Error as exc:
        why = str(exc).splitlines()[0]
        raise GuestInspectionError(f"{label}: unreadable cloudbase-init configuration {path}: {why}") from exc
    listed = parser.defaults().get("metadata_services")
    services = None if listed is None else [s.strip() for s in listed.split(",") if s.strip()]
    return Fact({"installed": True, "metadata_services": services, "conf": path},
                f"{label} {path} [DEFAULT] metadata_services")


def _version(hive: _Hive) -> Fact:
    key = hive.key(CURRENT_VERSION)
    found = hive.values(key, {"ProductName", "EditionID", "InstallationType", "CurrentBuildNumber", "CurrentBuild",
                              "UBR", "CurrentMajorVersionNumber", "CurrentMinorVersionNumber", "CurrentVersion",
                              "DisplayVersion", "ReleaseId"})
    text = {name: _text(found.get(name.upper())) for name in
            ("ProductName", "EditionID", "InstallationType", "CurrentBuildNumber", "CurrentBuild", "CurrentVersion",
             "DisplayVersion", "ReleaseId")}
    build = text["CurrentBuildNumber"] or text["CurrentBuild"]
    major, minor = _dword(found.get("CURRENTMAJORVERSIONNUMBER")), _dword(found.get("CURRENTMINORVERSIONNUMBER"))
    if major is None and text["CurrentVersion"]:  # before Windows 10 / Server 2016: "6.3"
        parts = text["CurrentVersion"].split(".")
        major, minor = _number(parts[0]), _number(parts[1]) if len(parts) > 1 else None
    version = {"ProductName": text["ProductName"], "EditionID": text["EditionID"],
               "InstallationType": text["InstallationType"], "CurrentBuildNumber": _number(build),
               "UBR": _dword(found.get("UBR")), "CurrentMajorVersionNumber": major,
               "CurrentMinorVersionNumber": minor, "DisplayVersion": text["DisplayVersion"],
               "ReleaseId": text["ReleaseId"]}
    return Fact(version, f"{hive.where} {CURRENT_VERSION}")


def _drivers(hive: _Hive) -> Fact:
    select = hive.values(hive.key(r"\Select"), {"Current"})
    current = _dword(select.get("CURRENT"))
    if current is None or not 1 <= current <= 999:
        raise hive.corrupt(rf"\Select Current is {select.get('CURRENT')!r}, not a control set number")
    services_path = rf"\ControlSet{current:03d}\Services"
    services = hive.key(services_path)
    wanted = {name.upper(): name for name in DRIVERS}
    drivers: dict[str, dict[str, Any]] = {}
    for key in hive.subkeys(services):
        name = wanted.get(key.name.upper())
        if name is None or name in drivers:
            continue
        found = hive.values(key, {"Start", "ImagePath"})
        start = _dword(found.get("START"))
        drivers[name] = {"start": start, "enabled": start is not None and start < 4,
                         "image_path": _text(found.get("IMAGEPATH"))}
    return Fact(dict(sorted(drivers.items())), f"{hive.where} {services_path}")


class _Hive:
    """One hive parsed by regipy, read along paths within a step budget and deadline."""

    def __init__(self, path: Path, where: str, named: str) -> None:
        self.where = where  # for evidence: "partition 3 /Windows/System32/config/SOFTWARE"
        self.named = named  # for errors: the same, after the disk's path
        self._steps = _STEPS
        self._deadline = time.monotonic() + _SECONDS
        from regipy.registry import RegistryHive  # 20 ms: only for a Windows guest

        self._regipy = self._guarded(lambda: RegistryHive(str(path)))

    @classmethod
    def copy(cls, guest: NtfsTree, label: str, path: str, dest: Path) -> _Hive:
        real = tree.resolve(guest, path)
        where, named = f"{label} {real or path}", f"{guest.label} {real or path}"
        if real is None or guest.lstat(real) != tree.Node("file"):
            raise GuestInspectionError(f"{named}: registry hive missing")
        if guest.copy(real, dest, HIVE_LIMIT + 1) > HIVE_LIMIT:
            raise OverBudgetError(f"{named}: registry hive larger than {human_size(HIVE_LIMIT)}: refused")
        with dest.open("rb") as f:
            head = f.read(4096 + 40)
        if len(head) < 4096 + 40 or head[:4] != b"regf" or head[4096:4100] != b"hbin" or \
                int.from_bytes(head[4128:4132], "little", signed=True) >= 0 or head[4132:4134] != b"nk":
            # regipy takes the first cell of the first hbin as the root key and scans for it byte by byte
            raise GuestInspectionError(f"{named}: corrupt registry hive: no root key where a hive keeps it")
        return cls(dest, where, named)

    def key(self, path: str) -> NKRecord:
        """The key at a backslash path; every key asked for exists in any Windows hive."""
        node: NKRecord = self._regipy.root
        on_path = {node.header.subkeys_list_offset}
        for name in [p for p in path.split("\\") if p]:
            child = self._guarded(functools.partial(self._child, node, name, on_path))
            if child is None:
                raise self.corrupt(f"no key {path}")
            node = child
            on_path.add(node.header.subkeys_list_offset)
        return node

    def subkeys(self, key: NKRecord) -> list[NKRecord]:
        def collect() -> list[NKRecord]:
            found = []
            for sub in key.iter_subkeys():
                self._spend()
                found.append(sub)
            return found
        return self._guarded(collect)

    def values(self, key: NKRecord, names: set[str]) -> dict[str, Any]:
        """The named values (upper-cased names: the registry ignores case), first of each name."""
        wanted = {n.upper() for n in names}

        def collect() -> dict[str, Any]:
            found: dict[str, Any] = {}
            for value in key.iter_values(trim_values=False):
                self._spend()
                if value.name.upper() in wanted:
                    found.setdefault(value.name.upper(), value.value)
            return found
        return self._guarded(collect)

    def corrupt(self, why: str) -> GuestInspectionError:
        return GuestInspectionError(f"{self.named}: corrupt registry hive: {why}")

    def _child(self, parent: NKRecord, name: str, on_path: set[int]) -> NKRecord | None:
        if not parent.subkey_count:
            return None
        seen = 0
        sub: NKRecord
        for sub in parent.iter_subkeys():
            self._spend()
            seen += 1
            if sub.subkey_count and sub.header.subkeys_list_offset in on_path:
                raise self.corrupt(f"subkey list of {parent.name!r} leads back to a key on the path (a loop)")
            if sub.name.upper() == name.upper():
                return sub
        if not seen:
            raise self.corrupt(f"unreadable subkey list of {parent.name!r}")
        return None

    def _spend(self) -> None:
        self._steps -= 1
        if self._steps < 0 or time.monotonic() > self._deadline:
            raise self.corrupt(f"more than {_STEPS} subkeys and values or {_SECONDS:.0f} s on a few keys")

    def _guarded(self, parse: Callable[[], _T]) -> _T:
        try:
            return parse()
        except GuestInspectionError:
            raise
        except Exception as exc:  # regipy and construct raise many types (and RecursionError) on bad data
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            raise self.corrupt(f"{type(exc).__name__}: {why}".rstrip(": ")) from exc


def _text(value: Any) -> str | None:
    return value.split("\0")[0][:_TEXT] if isinstance(value, str) else None


def _dword(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isascii() and text.isdigit() and len(text) < 10 else None
