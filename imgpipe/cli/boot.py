"""boot-check: boot one converted file under QEMU the way its profile's hypervisor would."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from imgpipe import errors, profiles, render, settings
from imgpipe.boot.firmware import Firmware
from imgpipe.cli.base import app, handled, settings_of
from imgpipe.cli.cloud import _properties
from imgpipe.cli.options import GuestPropertiesOpt, JsonOpt, OneProfileOpt, PropertyOpt, regex

ExpectOpt = Annotated[str, typer.Option(
    "--expect", callback=regex, metavar="REGEX", help="Regex on the serial console that means booted.")]
BootTimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1, metavar="SECONDS", help="Seconds to wait for --expect.")]


@app.command("boot-check")
@handled
def boot_check_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A file converted for the profile (an OVA's disk "
                                                           "is booted from inside it).")],
    profile: OneProfileOpt,
    expect: ExpectOpt = settings.BOOT_EXPECT,
    timeout: BootTimeoutOpt = settings.BOOT_TIMEOUT,
    log: Annotated[Path | None, typer.Option(
        "--log", metavar="FILE", dir_okay=False, help="Serial log (default FILE.boot.log).")] = None,
    firmware: Annotated[Firmware, typer.Option(help="auto: from the properties (hw_firmware_type, "
                                                    "hw_machine_type).")] = Firmware.auto,
    config_drive: Annotated[bool, typer.Option(
        "--config-drive", help="Attach a config drive as nova does for the profile; pass only when its user "
                               "data prints a random marker on the serial console (replaces --expect).")] = False,
    metadata_service: Annotated[bool, typer.Option(
        "--metadata-service", help="Give the guest a NIC on an isolated network where a nova-style metadata "
                                   "service answers at 169.254.169.254, and nova's SMBIOS; pass only when its "
                                   "user data prints a random marker (replaces --expect).")] = False,
    prop: PropertyOpt = None,
    guest_properties: GuestPropertiesOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Boot FILE under QEMU as its profile's hypervisor would.

    FILE boots read-only with the firmware and disk controller its published properties imply; the
    check passes when the serial console shows --expect within --timeout."""
    run = settings_of(ctx, as_json)
    chosen = profiles.select([profile], run.profiles())[0]
    from imgpipe.pipeline.boot import boot_file
    from imgpipe.pipeline.prepared import Preparation

    how = Preparation(work_dir=file.parent if file.parent.is_dir() else Path(tempfile.gettempdir()),
                      guest_properties=guest_properties)
    try:
        result = boot_file(file, chosen, _properties(prop), how, expect=expect, timeout=timeout, log=log,
                           firmware=firmware, config_drive=config_drive, metadata_service=metadata_service)
    except errors.BootCheckError as exc:
        if not as_json:
            render.err.print(exc.tail, highlight=False, markup=False)
        raise
    if as_json:
        run.emit_json(result.to_dict())
    elif result.skipped:
        render.err.print(f"skipped: {file} ({chosen.name}) is {result.skipped}", highlight=False)
    else:
        took = f"; user data from the config drive ran ({result.config_drive})" if result.config_drive else ""
        if result.user_data_from:
            took += f"; user data from the metadata service's {result.user_data_from} ran ({result.metadata_service})"
        render.out.print(f"booted {file} as {chosen.name} in {result.seconds:.0f} s ({result.firmware}, "
                         f"{result.controller}: {result.why}, {result.accel}){took}; serial log {result.log}",
                         highlight=False, soft_wrap=True)
