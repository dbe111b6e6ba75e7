"""Boot-check a converted file as its profile's hypervisor would: the disk inside a package
(an OVA's vmdk), with the properties its image carries."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from imgpipe.boot.check import BootResult, boot_check, skip_reason
from imgpipe.boot.firmware import Firmware
from imgpipe.pipeline.prepared import Preparation, prepare
from imgpipe.profiles import Profile
from imgpipe.source import unpack


def boot_file(path: Path, profile: Profile, given: Mapping[str, str], how: Preparation, *, expect: str,
              timeout: float, log: Path | None, firmware: Firmware = Firmware.auto,
              config_drive: bool = False, metadata_service: bool = False) -> BootResult:
    """boot-check: the file is prepared like a source (unpacked, its guest read), and booted with
    what publish would derive for it under the profile and the user's properties."""
    if reason := skip_reason(profile):
        return BootResult(path, profile.name, False, 0.0, None, skipped=reason)
    with prepare(path, [profile], replace(how, refuse=False)) as prepared:
        return boot_check(prepared.disk, profile, prepared.properties_for(profile, given), expect=expect,
                          timeout=timeout, log=log or path.with_name(path.name + ".boot.log"), firmware=firmware,
                          config_drive=config_drive, metadata_service=metadata_service)


def boot_output(path: Path, profile: Profile, properties: Mapping[str, str], *, expect: str, timeout: float,
                log: Path, stop: threading.Event | None = None, config_drive: bool = False,
                metadata_service: bool = False) -> BootResult:
    """publish --boot-check: an output whose properties are already final."""
    if reason := skip_reason(profile):
        return BootResult(path, profile.name, False, 0.0, None, skipped=reason)
    with tempfile.TemporaryDirectory(prefix="imgpipe-boot-", dir=path.parent) as tmp, \
            unpack.unpacked(path, Path(tmp)) as disk:
        return boot_check(disk, profile, properties, expect=expect, timeout=timeout, log=log, stop=stop,
                          config_drive=config_drive, metadata_service=metadata_service)
