"""The inspection's budget (guest.fs.budget): each limit, set low through its environment
variable, stops `imgpipe inspect` on a real guest disk with exit 20 and one line naming the
disk, the structure and the limit; the defaults leave the same disk's inspection alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import guest_disks as gd
import hostile_disks
import pytest
from typer.testing import CliRunner

from imgpipe.cli import app


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gd.build(tmp_path_factory.mktemp("budget") / "debian.qcow2", gd.Guest())


def _inspect(disk: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["inspect", str(disk), "--json"])
    return result.exit_code, result.stderr if result.exit_code else result.stdout


def test_the_defaults_leave_a_real_guest_alone(debian: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = _inspect(debian, monkeypatch)
    assert code == 0, output
    assert json.loads(output)["guest"]["os_release"]["value"]["ID"] == "debian"


@pytest.mark.parametrize(("env", "value", "message"), [
    ("IMGPIPE_INSPECT_READ", "16K", r"partition \d: reading .* at byte \d+ would take inspection past its "
                                    r"16\.0 KiB read budget \(IMGPIPE_INSPECT_READ\)"),
    ("IMGPIPE_INSPECT_ENTRIES", "3", r"partition \d: directory inode \d+: \d+ entries take the directories held "
                                     r"past the 3 entry budget \(IMGPIPE_INSPECT_ENTRIES\)"),
    ("IMGPIPE_INSPECT_DIRECTORY", "512", r"partition \d: directory inode \d+ is [\d.]+ KiB, over the 512 B "
                                         r"budget for one directory \(IMGPIPE_INSPECT_DIRECTORY\)"),
])
def test_each_limit_stops_inspection_with_one_line(debian: Path, monkeypatch: pytest.MonkeyPatch, env: str,
                                                   value: str, message: str) -> None:
    code, output = _inspect(debian, monkeypatch, **{env: value})
    assert code == 20, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"imgpipe: error: {debian}: "), output
    assert re.search(message, lines[0]), output


@pytest.mark.parametrize(("env", "value"), [("IMGPIPE_INSPECT_READ", "abc"), ("IMGPIPE_INSPECT_READ", "-1"),
                                            ("IMGPIPE_INSPECT_ENTRIES", "lots"), ("IMGPIPE_INSPECT_COPY", "1Q")])
@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_a_limit_that_is_not_a_size_is_a_usage_error_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, value: str, command: str) -> None:
    """A source that does not exist would be exit 4: the setting is checked before it is opened,
    and nothing is written."""
    monkeypatch.setenv(env, value)
    out = tmp_path / "out"
    args = [command, str(tmp_path / "missing.qcow2")] + (["-p", "kvm", "-o", str(out)] if command == "convert" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"imgpipe: error: {env}={value}: {value!r} is not a size like 512M, 20G or 1T"], result.stderr
    assert not out.exists()


def test_a_hostile_esp_is_stopped_by_the_read_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ESP reader keeps its own caps (4096 entries a directory, 4096 files), yet within them
    4096 directories sharing one chain read 512 MiB: the inspection's read budget stops it."""
    disk = hostile_disks.esp_directories_sharing_a_chain(tmp_path / "esp.qcow2")
    code, output = _inspect(disk, monkeypatch)
    assert code == 20, output
    assert re.fullmatch(rf"imgpipe: error: {re.escape(str(disk))}: partition 1: reading [\d.]+ \w*B at byte \d+ "
                        r"would take inspection past its 256\.0 MiB read budget \(IMGPIPE_INSPECT_READ\)",
                        output.strip()), output
