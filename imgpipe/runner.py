"""The one place imgpipe starts external commands: logs the exact argv, applies limits."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import resource
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from imgpipe import retry
from imgpipe.errors import ToolMissingError

LOG = logging.getLogger("imgpipe.run")

# Debian package that provides each external tool, for the "not installed" message.
PACKAGES = {"qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils", "sfdisk": "fdisk",
            "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs",
            "ntfsls": "ntfs-3g", "xz": "xz-utils", "zstd": "zstd", "lbzip2": "lbzip2", "bzip2": "bzip2",
            "qemu-system-x86_64": "qemu-system-x86"}

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


@dataclass(frozen=True)
class Limits:
    """Resource limits for commands that parse untrusted images (nova uses the same)."""

    cpu_seconds: int = 30
    address_space: int = 1 << 30

    def apply(self) -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (self.address_space, self.address_space))


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(Exception):
    """A command exited with an unexpected code; callers turn it into a domain error."""

    def __init__(self, result: Result) -> None:
        self.result = result
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        super().__init__(f"{result.argv[0]} failed: {tail[0]}")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = PACKAGES.get(tool, tool)
        raise ToolMissingError(
            f"{tool} is not installed: run 'make deps' as root or 'apt-get install {package}'"
        )
    return path


def run(
    argv: Sequence[str],
    *,
    limits: Limits | None = None,
    ok_codes: Sequence[int] = (0,),
    on_progress: Callable[[float], None] | None = None,
) -> Result:
    """Run argv, log it, and return its output; raise CommandFailed on other exit codes.

    With on_progress, stdout is read as qemu-img's `-p` progress stream ("(12.50/100%)\\r").
    """
    require(argv[0])
    return retry.command(argv[0], lambda: _run_once(argv, limits, ok_codes, on_progress),
                         lambda exc: exc.result.stderr if isinstance(exc, CommandFailed) else "")


@contextlib.contextmanager
def stream(argv: Sequence[str]) -> Iterator[IO[bytes]]:
    """Run argv with its stdout as a pipe the caller reads (a decompressor feeding a bounded copy).

    Not retried: the caller has consumed the output. If the caller stops early (an error, a
    limit), the command is killed; otherwise a non-zero exit raises CommandFailed.
    """
    require(argv[0])
    LOG.info("run: %s", shlex.join(argv))
    with tempfile.TemporaryFile() as stderr, subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        returncode = proc.wait()
        if returncode != 0:
            stderr.seek(0)
            raise CommandFailed(Result(tuple(argv), returncode, "", stderr.read().decode(errors="replace")))


def _run_once(
    argv: Sequence[str],
    limits: Limits | None,
    ok_codes: Sequence[int],
    on_progress: Callable[[float], None] | None,
) -> Result:
    LOG.info("run: %s", shlex.join(argv))
    preexec = limits.apply if limits else None
    if on_progress is None:
        proc = subprocess.run(
            list(argv), capture_output=True, preexec_fn=preexec, check=False, stdin=subprocess.DEVNULL
        )
        stdout, stderr, returncode = proc.stdout, proc.stderr, proc.returncode
    else:
        stdout, stderr, returncode = _run_with_progress(argv, preexec, on_progress)
    result = Result(
        tuple(argv),
        returncode,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
    )
    if result.returncode not in ok_codes:
        raise CommandFailed(result)
    return result


def _run_with_progress(
    argv: Sequence[str],
    preexec: Callable[[], None] | None,
    on_progress: Callable[[float], None],
) -> tuple[bytes, bytes, int]:
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec,
    ) as proc:
        assert isinstance(proc.stdout, io.BufferedReader) and proc.stderr is not None
        seen = b""
        while chunk := proc.stdout.read1(4096):
            seen = (seen + chunk)[-256:]
            matches = _PROGRESS.findall(seen)
            if matches:
                on_progress(float(matches[-1]))
                seen = b""
        stderr = proc.stderr.read()
        proc.wait()
    return b"", stderr, proc.returncode


@contextlib.contextmanager
def spawn(argv: Sequence[str], *, output: IO[bytes],
          limits: Limits | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running command (a guest under qemu, an NBD server) the caller uses and ends.

    stdout and stderr go to `output`. Whatever way the block is left (done, timeout, Ctrl-C),
    the command is killed and reaped: no process outlives the caller.
    """
    require(argv[0])
    LOG.info("run: %s", shlex.join(argv))
    with subprocess.Popen(list(argv), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          preexec_fn=limits.apply if limits else None) as proc:
        try:
            yield proc
        finally:
            proc.kill()
            proc.wait()
