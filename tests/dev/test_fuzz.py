"""Issue 20, step 4: a hostile disk cannot exhaust the machine. Seeded mutations of every
reader's real fixture and the named hostile disks, each through the real `imgpipe inspect`
under the fuzzer's limits (imgpipe_dev.fuzz: 60 s, 300 MiB of RSS for the whole process tree,
exit 0 or 20 with one error line, no traceback, nothing left running).

`make test` runs CASES_PER_TARGET cases of each target (seed FUZZ_SEED, 2 by default);
`make fuzz` runs many more and prints the worst time and RSS.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
from pathlib import Path

import fuzz_targets
import hostile_disks
import pytest

from imgpipe_dev import fuzz

CASES_PER_TARGET = 2
# Any seed: an open bug a seed meets becomes a named strict xfail in hostile_disks.
SEED = int(os.environ.get("FUZZ_SEED") or 2)
TARGETS = fuzz_targets.available()

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_mutations_end_in_exit_0_or_20_inside_the_limits(target: fuzz.Target, tmp_path: Path) -> None:
    index = TARGETS.index(target)
    cases = [(target, index + j * len(TARGETS)) for j in range(CASES_PER_TARGET)]
    outcomes = fuzz.campaign(seed=SEED, cases=cases, work=tmp_path / "work", keep=tmp_path / "kept")
    assert len(outcomes) == CASES_PER_TARGET
    failed = [o for o in outcomes if not o.ok]
    assert not failed, fuzz.summary(outcomes, 0)


def test_the_plan_covers_every_target_in_order() -> None:
    planned = fuzz.plan(TARGETS, 2 * len(TARGETS))
    assert [t.name for t, _ in planned] == [t.name for t in TARGETS] * 2
    assert [k for _, k in planned] == list(range(2 * len(TARGETS)))


def test_a_case_is_the_same_mutation_every_time(tmp_path: Path) -> None:
    """(seed, case) is the whole recipe: two runs write the same bytes, another seed does not."""
    target = TARGETS[0]
    b = fuzz.base(target)
    disks = []
    for n, seed in enumerate((7, 7, 8)):
        disk = tmp_path / f"{n}.img"
        fuzz.sparse_copy(b.disk, disk)
        with disk.open("r+b") as f:
            fuzz.mutate(random.Random(f"{seed}:{target.name}:3"), f, target, b)
        disks.append(disk)
    digest = [_digest(d) for d in disks]
    assert digest[0] == digest[1] != digest[2]


def _digest(disk: Path) -> str:
    """sha256 of a sparse disk's data and where it lies (reading 64 GiB of holes would take minutes)."""
    h = hashlib.sha256()
    with disk.open("rb") as f:
        for offset, length in fuzz.extents(disk):
            f.seek(offset)
            h.update(b"%d:" % offset + f.read(length))
    return h.hexdigest()


def test_the_limits_catch_a_runaway(tmp_path: Path) -> None:
    """The harness itself: a process that allocates past the RSS limit is stopped and reported,
    with its whole session killed (so a real runaway cannot take the machine down with it)."""
    script = tmp_path / "hog.py"
    script.write_text("import time\nblocks = []\nwhile True:\n    blocks.append(b\"x\" * (16 << 20))\n"
                      "    time.sleep(0.01)\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = fuzz.run_command([sys.executable, str(script)], tmp)
    assert run.exit_code is None and "RSS" in run.killed
    assert fuzz.RSS_LIMIT <= run.peak_rss < fuzz.ADDRESS_SPACE
    assert fuzz.judge(run, fuzz.ALLOWED_CODES, tmp, script.name) == [run.killed]


def _hostile(name: str) -> object:
    bug = hostile_disks.HOSTILE[name].open_bug
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=bug)) if bug else name


@pytest.mark.parametrize("name", [_hostile(name) for name in hostile_disks.HOSTILE])
def test_hostile_disk_ends_cleanly_inside_the_limits(name: str, tmp_path: Path) -> None:
    hostile = hostile_disks.HOSTILE[name]
    if (why := hostile.requires()) is not None:
        pytest.skip(why)
    disk = hostile.build(tmp_path / f"{name}.img")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = fuzz.run_inspect(disk, tmp)
    assert fuzz.judge(run, hostile.codes, tmp, disk.name) == [], (run.killed, run.stderr[-2000:])
    if run.exit_code:
        assert run.stderr.strip().splitlines() == [run.stderr.strip().splitlines()[-1]]
        assert run.stderr.startswith(f"imgpipe: error: {disk}: ")
        assert re.match(hostile.error, run.stderr.strip().removeprefix(f"imgpipe: error: {disk}: ")), run.stderr
