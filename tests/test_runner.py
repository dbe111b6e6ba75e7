"""The one runner of external commands: budgets (wall clock, CPU, output), no deadlock on a
talkative stderr, and no child outliving imgpipe. Real commands throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgpipe import runner
from imgpipe.cli.base import exit_code
from imgpipe.errors import OverBudgetError


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state in "ZX":
            return True
        time.sleep(0.05)
    return False


def test_a_tool_printing_without_end_is_stopped_at_the_cap(tmp_path: Path) -> None:
    big = tmp_path / "hostile.img"
    big.write_bytes(b"x" * (3 << 20))
    with pytest.raises(OverBudgetError) as caught:
        runner.run(["cat", str(big)], limits=runner.Limits(max_output=1 << 20))
    assert str(caught.value) == f"{big}: cat over budget: printed more than 1 MiB; stopped"
    assert exit_code(caught.value) == 20


def test_a_tool_that_sleeps_is_stopped_at_the_wall_clock() -> None:
    with pytest.raises(OverBudgetError, match=r"^sleep over budget: ran longer than 0.5 s; stopped$"):
        runner.run(["sleep", "30"], limits=runner.Limits(wall_seconds=0.5))


def test_a_tool_spinning_is_stopped_at_the_cpu_limit() -> None:
    with pytest.raises(OverBudgetError, match=r"sh over budget: used more than 1 s of CPU"):
        runner.run(["sh", "-c", "while :; do :; done"], limits=runner.Limits(cpu_seconds=1, wall_seconds=60))


def test_a_streamed_tool_is_stopped_at_the_wall_clock() -> None:
    with pytest.raises(OverBudgetError, match=r"^sleep over budget: ran longer than 0.5 s"), \
            runner.stream(["sleep", "30"], limits=runner.Limits(wall_seconds=0.5)) as out:
        assert out.read() == b""


def test_stderr_past_a_pipe_buffer_does_not_block_progress() -> None:
    """Stderr was read only after stdout closed: past 64 KiB the tool blocked for ever."""
    seen: list[float] = []
    script = "head -c 300000 /dev/zero | tr '\\0' e >&2; printf '(50.00/100%%)\\r(100.00/100%%)\\r'"
    result = runner.run(["sh", "-c", script], on_progress=seen.append,
                        limits=runner.Limits(wall_seconds=60))
    assert seen[-1] == 100.0 and len(result.stderr) == 300000


def test_output_within_the_cap_is_kept_whole() -> None:
    result = runner.run(["seq", "100000"], limits=runner.Limits(max_output=1 << 20, wall_seconds=60))
    assert result.stdout.splitlines()[-1] == "100000"


def test_children_die_with_imgpipe(tmp_path: Path) -> None:
    """SIGKILL (as the OOM killer sends) to a process holding a spawned child: the child goes too."""
    code = ("import sys, tempfile\n"
            "from imgpipe import runner\n"
            "with tempfile.TemporaryFile() as log, runner.spawn(['sleep', '300'], output=log) as proc:\n"
            "    print(proc.pid, flush=True)\n"
            "    sys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not _gone(child, 0.2)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(child, 10), f"sleep {child} outlived its killed parent"
    if not _gone(child, 0):
        os.kill(child, signal.SIGKILL)
