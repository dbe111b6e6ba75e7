from __future__ import annotations

import subprocess
from pathlib import Path

from imgpipe import owner


def test_owner_round_trips_and_is_alive() -> None:
    me = owner.me()
    assert owner.Owner.parse(str(me)) == me
    assert not me.is_dead_here()


def test_exited_or_reused_pid_is_dead_other_hosts_unknown() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    started = owner.started_at(proc.pid)
    assert started is not None
    here = owner.Owner(owner.me().host, proc.pid, started)
    assert not here.is_dead_here()
    assert owner.Owner(here.host, proc.pid, "1.00").is_dead_here()  # same pid, another process
    proc.kill()
    proc.wait()
    assert here.is_dead_here()
    assert not owner.Owner("elsewhere", proc.pid, started).is_dead_here()


def test_sweep_removes_only_dead_owners_dirs(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead, live, unowned = (tmp_path / f"imgpipe-publish-{n}" for n in ("dead", "live", "unowned"))
    for d in (dead, live, unowned):
        d.mkdir()
    (dead / owner.OWNER_FILE).write_text(f"{owner.me().host}:{proc.pid}:1.00\n")
    owner.claim_dir(live)
    assert owner.sweep(tmp_path, "imgpipe-publish-") == [dead]
    assert not dead.exists() and live.exists() and unowned.exists()


def test_temp_dirs_of_dead_runs_are_swept_when_the_next_is_made(tmp_path: Path) -> None:
    """An imgpipe killed outright leaves its imgpipe-nbd-* / imgpipe-guest-* dirs; the next run's
    owned_tempdir removes them (and only them) before making its own."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    stale, live = tmp_path / "imgpipe-nbd-stale", tmp_path / "imgpipe-nbd-live"
    for d in (stale, live):
        d.mkdir()
        (d / "sock").write_text("")
    (stale / owner.OWNER_FILE).write_text(f"{owner.me().host}:{proc.pid}:1.00\n")
    owner.claim_dir(live)
    with owner.owned_tempdir("imgpipe-nbd-", tmp_path) as mine:
        assert owner.Owner.parse((mine / owner.OWNER_FILE).read_text()) == owner.me()
        assert sorted(tmp_path.iterdir()) == sorted([live, mine])
    assert not mine.exists() and live.exists()

