"""qemu-img argv building and running: every call passes an explicit format, never a guess."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgpipe.runner import Limits, Result, run

QEMU_IMG = "qemu-img"
# nova's limits for `qemu-img info` on untrusted images, plus a wall clock and an output cap
# (qemu-img map of a hostile qcow2, debugfs or mdir listing a hostile directory).
INFO_LIMITS = Limits(cpu_seconds=30, address_space=1 << 30, wall_seconds=120.0, max_output=64 << 20)
# check and dd do I/O through qemu's thread pool (up to 64 threads, 8 MiB stack each), which
# under 1 GiB fails intermittently with "qemu_thread_create: Resource temporarily unavailable".
IO_LIMITS = Limits(cpu_seconds=120, address_space=4 << 30)
# Exit codes of `qemu-img check`: 0 clean, 3 leaked clusters only (harmless), 63 not supported.
CHECK_OK = (0, 3, 63)
# Measured on the 2 GiB sample (median of 3, from a compressed qcow2): -m 16 -W takes raw
# 0.49 -> 0.41 s, qcow2 0.54 -> 0.45 s, vhdx 0.64 -> 0.53 s; vmdk and vpc gain nothing from -W.
# -W (out-of-order writes) only changes where clusters land in the file, never what the guest
# reads; qemu-img refuses it with -c, and stream-like formats (vmdk, vpc) are left in order.
COROUTINES = 16
OUT_OF_ORDER = {"raw", "qcow2", "vhdx"}


@dataclass(frozen=True)
class Source:
    """An image as qemu-img should open it: a format, optionally a byte window (a partition)."""

    path: Path
    format: str
    offset: int | None = None
    size: int | None = None

    def image_opts(self) -> str:
        """--image-opts spec: the raw driver over the real format gives a partition window."""
        filename = str(self.path).replace(",", ",,")
        if self.offset is None:
            return f"driver={self.format},file.filename={filename}"
        return (f"driver=raw,offset={self.offset},size={self.size},"
                f"file.driver={self.format},file.file.filename={filename}")

    def args(self) -> list[str]:
        """Arguments naming this source: `-f FMT PATH`, or `--image-opts SPEC` for a window."""
        if self.offset is None:
            return ["-f", self.format, str(self.path)]
        return ["--image-opts", self.image_opts()]


def info(path: Path, fmt: str) -> dict[str, Any]:
    result = run([QEMU_IMG, "info", "--force-share", "--output=json", "-f", fmt, str(path)],
                 limits=INFO_LIMITS)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def check(path: Path, fmt: str) -> Result:
    return run([QEMU_IMG, "check", "--force-share", "--output=json", "-f", fmt, str(path)],
               limits=IO_LIMITS, ok_codes=CHECK_OK)


def measure_raw(src: Source) -> int:
    """Bytes of allocated data: what a sparse raw copy of src needs on disk."""
    result = run([QEMU_IMG, "measure", "--output=json", *src.args(), "-O", "raw"])
    return int(json.loads(result.stdout)["required"])


def data_extents(src: Source) -> list[tuple[int, int]]:
    """(start, end) guest ranges holding data, merged; zero and unallocated ranges are left out."""
    result = run([QEMU_IMG, "map", "--output=json", *src.args()], limits=INFO_LIMITS)
    ranges: list[tuple[int, int]] = []
    for entry in json.loads(result.stdout):
        if not entry.get("data") or entry.get("zero"):
            continue
        start, end = int(entry["start"]), int(entry["start"]) + int(entry["length"])
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def convert(
    src: Source,
    dest: Path,
    out_format: str,
    options: dict[str, str],
    compress: bool = False,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    argv = [QEMU_IMG, "convert", "-m", str(COROUTINES)]
    if out_format in OUT_OF_ORDER and not compress:
        argv.append("-W")
    if on_progress is not None:
        argv.append("-p")
    argv += src.args()
    argv += ["-O", out_format]
    if options:
        argv += ["-o", ",".join(f"{k}={v}" for k, v in sorted(options.items()))]
    if compress:
        argv.append("-c")
    run([*argv, str(dest)], on_progress=on_progress)


def compare(a: Source, b: Source) -> Result:
    """`qemu-img compare`; exit 1 means the guest-visible contents differ."""
    if a.offset is None and b.offset is None:
        argv = [QEMU_IMG, "compare", "--force-share", "-f", a.format, "-F", b.format,
                str(a.path), str(b.path)]
    else:
        argv = [QEMU_IMG, "compare", "--force-share", "--image-opts",
                a.image_opts(), b.image_opts()]
    return run(argv, ok_codes=(0, 1))
