"""The one place imgpipe starts external commands: logs the exact argv, applies limits."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import resource
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imgpipe import retry
from imgpipe.errors import OverBudgetError, ToolMissingError

LOG = logging.getLogger("imgpipe.run")

# Debian package that provides each external tool, for the "not installed" message.
PACKAGES = {"qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils", "sfdisk": "fdisk",
            "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs",
            "ntfsls": "ntfs-3g", "xz": "xz-utils", "zstd": "zstd", "lbzip2": "lbzip2", "bzip2": "bzip2",
            "qemu-system-x86_64": "qemu-system-x86"}

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
STDERR_KEPT = 1 << 20  # the end of stderr is where tools say what went wrong
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Limits:
    """Resource limits for commands that parse untrusted images (nova uses the same).

    The CPU limit alone lets a tool that blocks or sleeps run for ever, and one that prints
    without end fill the memory of whoever keeps its output: wall_seconds and max_output
    bound both. Over either, the command is killed and OverBudgetError raised.
    """

    cpu_seconds: int = 30
    address_space: int = 1 << 30
    wall_seconds: float | None = None
    max_output: int | None = None  # bytes of stdout kept in memory

    def apply(self) -> None:
        # SIGXCPU at the soft limit says why the command ended; SIGKILL a second later if ignored.
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 1))
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
def stream(argv: Sequence[str], *, limits: Limits | None = None) -> Iterator[IO[bytes]]:
    """Run argv with its stdout as a pipe the caller reads (a decompressor feeding a bounded copy).

    Not retried: the caller has consumed the output. If the caller stops early (an error, a
    limit), the command is killed; otherwise a non-zero exit raises CommandFailed. Past
    limits.wall_seconds the command is killed and the block ends in OverBudgetError.
    """
    require(argv[0])
    LOG.info("run: %s", shlex.join(argv))
    with tempfile.TemporaryFile() as stderr, subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            preexec_fn=_child_setup(limits)) as proc:
        assert proc.stdout is not None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(limits.wall_seconds, expire) if limits and limits.wall_seconds else None
        if timer:
            timer.start()
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        finally:
            if timer:
                timer.cancel()
        returncode = proc.wait()
        if expired.is_set() and limits:
            raise _over(argv, f"ran longer than {limits.wall_seconds:g} s")
        if returncode != 0:
            stderr.seek(0)
            raise CommandFailed(Result(tuple(argv), returncode, "", _tail(stderr.read()).decode(errors="replace")))


def _run_once(
    argv: Sequence[str],
    limits: Limits | None,
    ok_codes: Sequence[int],
    on_progress: Callable[[float], None] | None,
) -> Result:
    LOG.info("run: %s", shlex.join(argv))
    with subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          preexec_fn=_child_setup(limits)) as proc:
        try:
            stdout, stderr = _communicate(proc, argv, limits, on_progress)
        except BaseException:
            proc.kill()
            raise
    if limits and proc.returncode == -signal.SIGXCPU:
        raise _over(argv, f"used more than {limits.cpu_seconds} s of CPU")
    result = Result(
        tuple(argv),
        proc.returncode,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
    )
    if result.returncode not in ok_codes:
        raise CommandFailed(result)
    return result


def _communicate(proc: subprocess.Popen[bytes], argv: Sequence[str], limits: Limits | None,
                 on_progress: Callable[[float], None] | None) -> tuple[bytes, bytes]:
    """Read stdout and stderr together (one left unread fills its pipe and blocks the command),
    within the wall clock and the output cap; with on_progress, stdout is only parsed."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limits.wall_seconds if limits and limits.wall_seconds else None
    cap = limits.max_output if limits else None
    out, err, seen = bytearray(), bytearray(), b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _over(argv, f"ran longer than {limits.wall_seconds:g} s" if limits else "")
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data is err:
                    err += chunk
                    del err[:-STDERR_KEPT]
                elif on_progress is not None:
                    seen = (seen + chunk)[-256:]
                    if matches := _PROGRESS.findall(seen):
                        on_progress(float(matches[-1]))
                        seen = b""
                else:
                    out += chunk
                    if cap is not None and len(out) > cap:
                        raise _over(argv, f"printed more than {_size(cap)}")
    try:
        proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise _over(argv, f"ran longer than {limits.wall_seconds:g} s" if limits else "") from None
    return bytes(out), bytes(err)


def _over(argv: Sequence[str], what: str) -> OverBudgetError:
    """One line: the file the command read (the last argument naming an existing file), the
    tool, and the limit it went over."""
    files = [a for a in argv[1:] if os.path.isfile(a)]
    subject = f"{files[-1]}: " if files else ""
    return OverBudgetError(f"{subject}{Path(argv[0]).name} over budget: {what}; stopped")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def _tail(data: bytes) -> bytes:
    return data[-STDERR_KEPT:]


@functools.cache
def _prctl() -> Callable[..., int]:
    """Loaded in the parent: a child between fork and exec should not load libraries (and
    start-up does not pay for ctypes before a command starts a child)."""
    import ctypes

    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def _child_setup(limits: Limits | None) -> Callable[[], None]:
    """What runs in each child before exec: die with imgpipe, then the limits.

    PR_SET_PDEATHSIG fires when the thread that started the child ends; every command here
    is started and waited for (or killed) by one thread, so that is when imgpipe lets go of
    it, and an imgpipe killed outright (OOM killer, SIGKILL) takes its children with it.
    """
    prctl = _prctl()
    parent = os.getpid()

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # imgpipe died before prctl took effect
            os._exit(1)
        if limits is not None:
            limits.apply()

    return setup


@contextlib.contextmanager
def spawn(argv: Sequence[str], *, output: IO[bytes],
          limits: Limits | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running command (a guest under qemu, an NBD server) the caller uses and ends.

    stdout and stderr go to `output`. Whatever way the block is left (done, timeout, Ctrl-C),
    the command is killed and reaped: no process outlives the caller, even one killed outright.
    """
    require(argv[0])
    LOG.info("run: %s", shlex.join(argv))
    with subprocess.Popen(list(argv), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          preexec_fn=_child_setup(limits)) as proc:
        try:
            yield proc
        finally:
            proc.kill()
            proc.wait()
