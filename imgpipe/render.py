"""Output for people (rich tables, progress bars) and for machines (--json), in one place."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

# Piped output (CI logs) gets a wide fixed width instead of 80 columns that truncate ids.
out = Console() if Console().is_terminal else Console(width=200)
err = Console(stderr=True)


def write_json(data: Any) -> None:
    """Write one JSON document (a run writes at most one: cli.base.Settings keeps count)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title)
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    out.print(t)


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@contextmanager
def progress(quiet: bool) -> Iterator[Callable[[str, float], None] | None]:
    """A rich bar per label on a terminal; one plain line per label otherwise; nothing when quiet."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        seen: set[str] = set()

        def plain(label: str, pct: float) -> None:
            if label not in seen:
                seen.add(label)
                err.print(f"writing {label}", highlight=False)

        yield plain
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def update(label: str, pct: float) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=100)
            bar.update(tasks[label], completed=pct)

        yield update
