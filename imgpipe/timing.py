"""Where a run's wall time goes, for the bench: phases appended as JSON lines to $IMGPIPE_TIMING.

Unset (always, outside the bench), a span is one check of a constant: nothing is timed,
kept or written. Each record is {"phase", "start", "end"} in time.time() seconds, so the
bench can set them against the moment it started the process; overlapping phases (the
token fetched while the file is read) show as overlapping spans, not as a sum.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "IMGPIPE_TIMING"


class Recorder:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    @contextmanager
    def span(self, phase: str) -> Iterator[None]:
        if not self.path:
            yield
            return
        start = time.time()
        try:
            yield
        finally:
            self.record(phase, start, time.time())

    def mark(self, phase: str) -> None:
        """A moment rather than a span (e.g. the command starting, after the imports)."""
        if self.path:
            now = time.time()
            self.record(phase, now, now)

    def record(self, phase: str, start: float, end: float) -> None:
        assert self.path is not None
        line = json.dumps({"phase": phase, "start": start, "end": end}) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


RECORDER = Recorder(os.environ.get(ENV) or None)
span = RECORDER.span
mark = RECORDER.mark
