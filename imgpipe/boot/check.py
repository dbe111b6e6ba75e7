"""Prove that a converted output boots: start it under QEMU as its hypervisor would, watch the
serial console for a login prompt, and stop it.

A guest that does not boot rarely says so (SeaBIOS on a UEFI-only disk just prints "Booting
from Hard Disk..." and waits), so the check is a marker on ttyS0 within a timeout, and the
serial log is kept for the failure message. With a config drive or a metadata service the marker
is one that only their user data prints: booting is not enough, cloud-init must have taken it.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgpipe import runner, settings
from imgpipe.boot.firmware import REFUSED, Firmware
from imgpipe.boot.machine import Machine, MetadataLink, machine_for, private_vars
from imgpipe.boot.tpm import PROBED, swtpm
from imgpipe.errors import BootCheckError
from imgpipe.owner import owned_tempdir
from imgpipe.profiles import Profile
from imgpipe.source.inspect import inspect_image
from imgpipe.units import human_size

if TYPE_CHECKING:
    from imgpipe.boot.metadata_service import MetadataService

DEFAULT_EXPECT = settings.BOOT_EXPECT
DEFAULT_TIMEOUT = settings.BOOT_TIMEOUT
TAIL_LINES = 15
POLL_SECONDS = 0.5
PANIC = re.compile(r"Kernel panic - not syncing[^\n]*")
LOG_CAP = 16 << 20  # a serial log past this is a guest flooding its console, not booting: qemu is stopped
WINDOW = 64 << 10  # console text a match may span (and a tail is taken from): the newest, kept between reads
_CHUNK = 4 << 20  # read per poll at most: a console faster than 8 MiB/s meets the cap before its marker
CONFIG_DRIVE_HOSTNAME = "imgpipe-boot-check"
USER_DATA_PATHS = ("/user_data", "/user-data")  # the OpenStack and the EC2 tree's
# cloud-init's final message on the console: past it, user data that has not run never will.
CLOUD_INIT_DONE = re.compile(r"Cloud-init v\. \S+ finished at [^\n]*?Datasource (\w+)")
# Made once with ssh-keygen; its private half was thrown away: nobody logs in, the guest only takes it.
THROWAWAY_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL2fpQttEf4UE6ByM2IAzb+zb85vmlnkiHygXDwb1kmH "
                 "imgpipe-boot-check")


@dataclass(frozen=True)
class BootResult:
    path: Path
    profile: str
    booted: bool
    seconds: float
    log: Path | None
    firmware: str = ""
    controller: str = ""
    why: str = ""
    accel: str = ""
    skipped: str = ""
    config_drive: str = ""  # where it was attached, when the check used one
    metadata_service: str = ""  # the NIC it was reached through, when the check offered one
    user_data_from: str = ""  # the metadata service path the guest read its user data from

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "profile": self.profile, "booted": self.booted,
                "seconds": round(self.seconds, 1), "log": str(self.log) if self.log else None,
                "firmware": self.firmware, "controller": self.controller, "why": self.why,
                "accel": self.accel, "skipped": self.skipped or None, "config_drive": self.config_drive or None,
                "metadata_service": self.metadata_service or None, "user_data_from": self.user_data_from or None}


def skip_reason(profile: Profile) -> str:
    """Why qemu cannot boot this profile's output, or "" when it can."""
    if profile.kind is not None and profile.kind.not_bootable:
        return profile.kind.not_bootable
    if profile.extract:
        return "a bare root filesystem (no firmware boots it): not bootable under QEMU"
    return ""


def boot_check(path: Path, profile: Profile, properties: Mapping[str, str] | None = None, *,
               expect: str = DEFAULT_EXPECT, timeout: float = DEFAULT_TIMEOUT, log: Path | None = None,
               firmware: Firmware = Firmware.auto, stop: threading.Event | None = None,
               config_drive: bool = False, metadata_service: bool = False) -> BootResult:
    """Boot `path` (a disk image qemu reads, not a package) read-only with the machine
    `properties` (default: the profile's) imply.

    Raises BootCheckError when `expect` does not appear on the serial console within `timeout`
    seconds or qemu stops first; the serial log is kept (at `log`, else beside the image).
    Setting `stop` (from another thread) ends the boot as failed. `config_drive` attaches a
    nova-style config drive, `metadata_service` gives the guest a NIC reaching a nova-style
    metadata service at 169.254.169.254; their user data prints a random marker, which replaces `expect`.
    """
    props = dict(profile.properties if properties is None else properties)
    if reason := skip_reason(profile):
        return BootResult(path, profile.name, False, 0.0, None, skipped=reason)
    fmt = inspect_image(path).format  # the safety checks, and the format from content
    machine = machine_for(props, firmware)
    serial = log or path.with_name(path.name + ".boot.log")
    firmware_log = serial.with_name(serial.name + ".firmware")
    marker = f"imgpipe-{secrets.token_hex(8)}" if config_drive or metadata_service else ""
    pattern = re.compile(re.escape(marker) if marker else expect)
    instance = str(uuid.uuid4())
    with owned_tempdir("imgpipe-boot-") as tmp, contextlib.ExitStack() as helpers, \
            _metadata_service(metadata_service, instance, marker) as service:
        vars_copy = private_vars(Path(tmp), machine.platform.vars_template) \
            if machine.firmware is Firmware.uefi else None
        iso = boot_config_drive(Path(tmp) / "config-2.iso", marker, instance) if config_drive else None
        socket = helpers.enter_context(swtpm(machine.tpm, Path(tmp))) if machine.tpm else None
        link = MetadataLink(service.network, service.guestfwd(), instance) if service else None
        argv = machine.argv(path, fmt, serial, vars_copy, firmware_log, iso, link, socket)
        serial.unlink(missing_ok=True)
        firmware_log.unlink(missing_ok=True)
        seconds, outcome = _watch(argv, Path(tmp) / "qemu.out", serial, pattern, timeout,
                                  stop or threading.Event(), CLOUD_INIT_DONE if marker else None, firmware_log)
        if not outcome:
            outcome = _unproven(machine, _head(serial))
    read = [p for p in service.paths() if p.endswith(USER_DATA_PATHS)] if service else []
    if marker and outcome.startswith(("no match", "cloud-init finished")):
        outcome = _never_ran(marker, outcome, config_drive, service)
    result = BootResult(path, profile.name, outcome == "", seconds, serial, machine.firmware.value,
                        machine.controller.name, machine.why, "kvm" if machine.kvm else "tcg",
                        config_drive=machine.config_drive.why if config_drive else "",
                        metadata_service=f"{machine.nic.model}: {machine.nic.why}" if service else "",
                        user_data_from=read[0] if read else "")
    if outcome:
        shown = serial if tail(serial) else firmware_log  # nothing on ttyS0: the firmware's last words
        raise BootCheckError(f"{path}: did not boot as {profile.name} ({_describe(machine)}): {outcome}; "
                             f"log {shown}, last line: {_last_line(shown)!r}", tail=tail(shown))
    firmware_log.unlink(missing_ok=True)
    return result


def _watch(argv: list[str], qemu_out: Path, serial: Path, pattern: re.Pattern[str],
           timeout: float, stop: threading.Event, give_up: re.Pattern[str] | None = None,
           firmware_log: Path | None = None) -> tuple[float, str]:
    """Seconds taken and "" on success, else what went wrong; qemu is gone when this returns.
    `give_up` on the console without `pattern` before it ends the boot as failed; so does a loader
    Secure Boot refuses (the firmware then waits in its boot manager) and a kernel panic."""
    started = time.monotonic()
    console = _Console(serial)
    with open(qemu_out, "wb") as out, runner.spawn(argv, output=out) as proc:
        while True:
            elapsed = time.monotonic() - started
            text = console.poll()
            if pattern.search(text):
                return elapsed, ""
            if give_up and (done := give_up.search(text)):
                return elapsed, f"cloud-init finished with {done.group(1)} after {elapsed:.0f} s"
            if refused := REFUSED.search(text + "\n" + (_text(firmware_log) if firmware_log else "")):
                return elapsed, f"Secure Boot refused the boot chain: {_clean(refused.group(0))!r}"
            if panic := PANIC.search(text):  # with -no-reboot qemu would sit there until the timeout
                return elapsed, f"the guest's kernel panicked: {_clean(panic.group(0))!r}"
            if console.size > LOG_CAP:
                return elapsed, (f"the serial log passed its {human_size(LOG_CAP)} cap before {pattern.pattern!r} "
                                 "showed (a guest flooding its console)")
            if proc.poll() is not None:
                message = qemu_out.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                return elapsed, f"qemu exited with code {proc.returncode} {message[0]}".strip()
            if elapsed > timeout:
                return elapsed, f"no match for {pattern.pattern!r} within {timeout:g} s"
            if stop.wait(POLL_SECONDS):
                return elapsed, "stopped: the run was interrupted"


def _unproven(machine: Machine, console: str) -> str:
    """What the properties asked for that the guest's console does not show (it booted, but not
    as the target would boot it): Secure Boot enforced, a TPM found."""
    needed = machine.platform.proofs() + ([("a TPM found by the kernel", PROBED)] if machine.tpm else [])
    missing = [what for what, line in needed if not line.search(console)]
    return f"booted, but the console never showed {' nor '.join(missing)}" if missing else ""


def _clean(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", line).strip()[:160]


def boot_config_drive(dest: Path, marker: str, instance: str | None = None) -> Path:
    """A drive as nova builds one for a new server: its uuid, a key, user data printing `marker`."""
    from imgpipe.boot.config_drive import build_config_drive, marker_user_data  # pycdlib: only when asked

    return build_config_drive(dest, uuid=instance or str(uuid.uuid4()), hostname=CONFIG_DRIVE_HOSTNAME,
                              public_key=THROWAWAY_KEY, user_data=marker_user_data(marker))


@contextlib.contextmanager
def _metadata_service(wanted: bool, instance: str, marker: str) -> Iterator[MetadataService | None]:
    """nova's metadata service for the server the config drive describes too, while the guest runs."""
    if not wanted:
        yield None
        return
    from imgpipe.boot.config_drive import marker_user_data
    from imgpipe.boot.metadata_service import Server, serving

    with serving(Server(uuid=instance, hostname=CONFIG_DRIVE_HOSTNAME, public_key=THROWAWAY_KEY,
                        user_data=marker_user_data(marker))) as service:
        yield service


def _never_ran(marker: str, why: str, config_drive: bool, service: MetadataService | None) -> str:
    """Why the marker is missing, with what the guest asked the metadata service for."""
    sources, asks, heard = [], [], ""
    if config_drive:
        sources, asks = ["the config drive's"], ["ConfigDrive"]
    if service is not None:
        sources.append("the metadata service's")
        asks.append("OpenStack or Ec2")
        read = service.paths()
        user_data = [p for p in read if p.endswith(USER_DATA_PATHS)]
        heard = (f"; the guest read its user data ({user_data[0]})" if user_data else
                 f"; the guest read {len(read)} paths from the metadata service, not its user data" if read else
                 "; the guest never asked the metadata service")
    return (f"{' and '.join(sources)} user data never ran ({marker} not on the serial console: {why}"
            f"{heard}; does cloud-init ask {' or '.join(asks)}?)")


def _describe(machine: Machine) -> str:
    platform = machine.platform
    extra = [platform.arch] if platform.arch != "x86_64" else []
    extra += ["Secure Boot"] if platform.secure_boot else []
    extra += [f"TPM {machine.tpm.version} {machine.tpm.model}"] if machine.tpm else []
    return ", ".join([machine.firmware.value, machine.controller.name, *extra, "kvm" if machine.kvm else "tcg"])


class _Console:
    """The serial log as qemu writes it, read from where the last poll stopped: each byte is read
    once, and only the newest WINDOW of text is kept, so a guest flooding its console costs
    linear time and bounded memory; a marker split over two reads is found in the kept text."""

    def __init__(self, serial: Path) -> None:
        self.serial = serial
        self.offset = 0
        self.size = 0  # of the log file, at the last poll
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._kept = ""

    def poll(self) -> str:
        """The text kept from earlier polls and what is new (at most _CHUNK of it per poll)."""
        try:
            f = self.serial.open("rb")
        except FileNotFoundError:
            return self._kept
        with f:
            self.size = os.fstat(f.fileno()).st_size
            f.seek(self.offset)
            new = f.read(_CHUNK)
        self.offset += len(new)
        text = self._kept + self._decoder.decode(new)
        self._kept = text[-WINDOW:]
        return text


def _head(serial: Path) -> str:
    """The log up to its cap: proofs such as "Secure boot enabled" come early in a boot, long
    before the window _Console keeps."""
    try:
        with serial.open("rb") as f:
            return f.read(LOG_CAP).decode(errors="replace")
    except FileNotFoundError:
        return ""


def _text(serial: Path) -> str:
    """The log's last WINDOW bytes: all a person reads of it in a failure message."""
    try:
        with serial.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - WINDOW))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def tail(serial: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of the serial log with terminal escapes removed, for a person to read."""
    clean = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", _text(serial))
    return "\n".join([line for line in clean.splitlines() if line.strip()][-lines:])


def _last_line(serial: Path) -> str:
    return (tail(serial, 1) or "(empty)")[:120]
