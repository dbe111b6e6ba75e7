"""Output for people (rich tables, progress bars and lines) and for machines (--json), in one place.

rich loads when something is printed for people: a --json run (CI, the bench) never pays its
~80 ms import, and neither does a command that fails on its arguments before printing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgpipe.progress import Progress as ProgressCallback
from imgpipe.units import human_size

# Piped output (CI logs) has no terminal width: $COLUMNS when set, else this.
PIPED_WIDTH = 120
# Seconds between two progress lines of one step when stderr is not a terminal.
PROGRESS_INTERVAL_ENV = "IMGPIPE_PROGRESS_INTERVAL"
PROGRESS_INTERVAL = 10.0

if TYPE_CHECKING:
    from rich.console import Console


def _console(stderr: bool) -> Console:
    """Messages on stderr are never wrapped (soft_wrap): a log line stays one line, whole words."""
    from rich.console import Console

    console = Console(stderr=stderr, soft_wrap=stderr, highlight=not stderr)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(stderr=stderr, soft_wrap=stderr, highlight=not stderr, width=PIPED_WIDTH)


_CONSOLES = {"out": False, "err": True}  # render.out (stdout) and render.err (stderr)
_made = threading.Lock()


def __getattr__(name: str) -> Console:
    """render.out and render.err, each made on first use and kept (PEP 562)."""
    if name not in _CONSOLES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _kept(name)


def _kept(name: str) -> Console:
    with _made:
        console: Console = globals().get(name) or _console(stderr=_CONSOLES[name])
        globals()[name] = console
    return console


def write_json(data: Any) -> None:
    """Write one JSON document (a run writes at most one: cli.base.Settings keeps count)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title)
    for column in columns:
        t.add_column(column, overflow="fold")  # a long path or id folds, never cut to "…"
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    _kept("out").print(t)


@contextmanager
def progress(quiet: bool) -> Iterator[ProgressCallback | None]:
    """A rich bar per label on a terminal; progress lines at a steady interval otherwise (a CI log
    shows a long step advance); nothing when quiet."""
    if quiet:
        yield None
        return
    err = _kept("err")
    if not err.is_terminal:
        yield _Lines(float(os.environ.get(PROGRESS_INTERVAL_ENV, PROGRESS_INTERVAL)))
        return
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def update(label: str, pct: float, total: int = 0) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=100)
            bar.update(tasks[label], completed=pct)

        yield update


@dataclass
class _Step:
    started: float
    printed_at: float
    printed_pct: float = -1.0


class _Lines:
    """One line when a step starts, one every `interval` seconds (percent, MB/s, ETA), one when done.
    Uploads report from several threads."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.steps: dict[str, _Step] = {}
        self.lock = threading.Lock()

    def __call__(self, label: str, pct: float, total: int = 0) -> None:
        now = time.monotonic()
        with self.lock:
            done = pct >= 100.0
            step = self.steps.get(label)
            if step is None:
                step = self.steps[label] = _Step(now, now)
                _kept("err").print(f"{label}: started" + (f" ({human_size(total)})" if total else ""))
                if not done:
                    return
            if step.printed_pct >= 100.0:
                return
            if not done and (int(pct) <= int(step.printed_pct) or now - step.printed_at < self.interval):
                return
            step.printed_at, step.printed_pct = now, pct
            _kept("err").print(f"{label}: {_line(pct, total, now - step.started)}")


def _line(pct: float, total: int, elapsed: float) -> str:
    """42% of 2.0 GiB, 85.3 MB/s, ETA 0:12 (or: done, 2.0 GiB in 0:23, 89.1 MB/s)."""
    rate = total * pct / 100 / elapsed / 1e6 if total and elapsed > 0 else None
    speed = f", {rate:.1f} MB/s" if rate is not None else ""
    if pct >= 100.0:
        size = f"{human_size(total)} " if total else ""
        return f"done, {size}in {_clock(elapsed)}{speed}"
    eta = f", ETA {_clock(elapsed * (100 - pct) / pct)}" if pct > 0 else ""
    return f"{pct:.0f}%" + (f" of {human_size(total)}" if total else "") + speed + eta


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
