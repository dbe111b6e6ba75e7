"""imgpipe.timing: spans as JSON lines when IMGPIPE_TIMING names a file, nothing otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from imgpipe.timing import Recorder


def test_off_records_nothing(tmp_path: Path) -> None:
    off = Recorder(None)
    with off.span("data"):
        off.mark("command")
    assert list(tmp_path.iterdir()) == []


def test_on_appends_one_line_per_span_even_when_the_phase_fails(tmp_path: Path) -> None:
    path = tmp_path / "timing.jsonl"
    on = Recorder(str(path))
    on.mark("command")
    try:
        with on.span("data"):
            raise ValueError("the upload failed")
    except ValueError:
        pass
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["phase"] for line in lines] == ["command", "data"]
    assert lines[0]["start"] == lines[0]["end"] and lines[1]["end"] >= lines[1]["start"] >= lines[0]["start"]
