"""The vTPM nova gives a guest with hw_tpm_version (libvirt runs swtpm for it): an swtpm socket
and the TPM device hw_tpm_model names, and the line the guest's kernel prints when it found it."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from imgpipe import runner
from imgpipe.errors import BootCheckError

SOCKET_WAIT = 10.0
# The kernel's TPM driver names the chip it bound ("tpm_crb MSFT0101:00: ...", "tpm_tis MSFT0101:00:
# 2.0 TPM ..."), and IMA then allocates its TPM's hash (without one: "ima: No TPM chip found").
PROBED = re.compile(r"tpm_(?:tis|crb) \S+: |ima: Allocated hash algorithm")


@dataclass(frozen=True)
class Tpm:
    version: str  # "1.2" or "2.0"
    model: str  # tpm-tis or tpm-crb

    def device(self, arch: str) -> str:
        """The -device for `model`: on Arm's virt machine the TIS is a sysbus device and there is no CRB."""
        if arch == "aarch64":
            return "tpm-tis-device,tpmdev=tpm0"
        return f"{self.model},tpmdev=tpm0"

    def argv(self, socket: Path, arch: str) -> list[str]:
        return ["-chardev", f"socket,id=chrtpm,path={socket}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                "-device", self.device(arch)]


def tpm_for(properties: Mapping[str, str]) -> Tpm | None:
    """nova adds a TPM only with hw_tpm_version; the model defaults to tpm-tis."""
    version = properties.get("hw_tpm_version")
    if not version:
        return None
    return Tpm(version, properties.get("hw_tpm_model", "tpm-tis").lower())


@contextlib.contextmanager
def swtpm(tpm: Tpm, directory: Path) -> Iterator[Path]:
    """An swtpm serving one guest over a control socket in `directory`, ended with the block."""
    state = directory / "tpm-state"
    state.mkdir()
    socket = directory / "swtpm.sock"
    argv = ["swtpm", "socket", "--tpmstate", f"dir={state}", "--ctrl", f"type=unixio,path={socket}",
            *(["--tpm2"] if tpm.version == "2.0" else [])]
    with open(directory / "swtpm.out", "wb") as out, runner.spawn(argv, output=out) as proc:
        deadline = time.monotonic() + SOCKET_WAIT
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                said = (directory / "swtpm.out").read_text(errors="replace").strip()
                raise BootCheckError(f"swtpm did not start its socket: {said or 'no output'}")
            time.sleep(0.05)
        yield socket
