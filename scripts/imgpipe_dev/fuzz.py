"""Fuzz `imgpipe inspect` with seeded mutations of real disk images, under hard limits.

Why: imgpipe reads untrusted disks in-process; a hostile geometry must end in exit 0 or 20,
never in a traceback, a hang or a machine out of memory (issue 20). Each reader's real test
fixture (ext, xfs, btrfs, LVM, NTFS and its hives, the FAT ESP, GPT/MBR, the qcow2/vmdk/vhd
headers) is built once into a cache; every case copies one, mutates it and runs the real CLI.

A case is a pure function of (seed, case number): the target is chosen by the case number
(round robin, so a handful of cases covers every reader), the mutations by
random.Random(f"{seed}:{target}:{case}"). Mutations aim at the structures that matter (named
fields of superblocks, descriptors, inode/extent records, directory blocks, btree nodes,
partition entries, container headers), set to boundary values, plus random byte flips; a
target may repair its checksums afterwards (most cases) so the mutation reaches the reader
behind the check.

A case passes when imgpipe, run as a subprocess of this interpreter's `imgpipe`:
- exits with an allowed code: 0, or 20 (GuestInspectionError: the guest is corrupt or over a
  budget), or one of the image-level refusals made before any guest reader runs: 5
  (UnsafeImageError: a bad partition table, a container qemu-img will not open, a truncated
  image) and 7 (ImageTooLargeError: a container header claiming more than the cap). Exit 19
  (GuestRefusedError) is a failure: inspect never refuses (it runs with refuse=False), it only
  reports; so is any other code (1 is an exception no handler mapped);
- prints, on failing, exactly one "imgpipe: error:" line, and no "Traceback" on either stream;
  every stderr line names the disk, as imgpipe's warnings and errors do (a library's log line
  or a tool's raw output does not, and is a failure);
- stays inside the wall clock (60 s) and keeps the whole process tree's resident memory under
  300 MiB (sum of VmRSS over the processes of its session, polled, and wait4's ru_maxrss);
- leaves no process of its session running and nothing in its private TMPDIR.

The address-space limit (RLIMIT_AS, soft) is a backstop for imgpipe's own Python process: it
turns a runaway allocation into a MemoryError (a failure with a traceback) long before the
machine runs out of memory. It is soft only so imgpipe can give qemu-nbd the 4 GiB of address
space its thread pool needs (runner.Limits), as it does outside the fuzzer.

Usage: python -m imgpipe_dev.fuzz [--cases N] [--seed S] [--case K] [--targets a,b] [--workers 2]
(with tests/support on PYTHONPATH, where the targets live: `make fuzz`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

MIB = 1 << 20
WALL_SECONDS = 60.0
RSS_LIMIT = 300 * MIB
# imgpipe's own process needs far less (every case runs under it); a runaway allocation stops at once.
ADDRESS_SPACE = 1 << 30
POLL_SECONDS = 0.02
ALLOWED_CODES = frozenset({0, 5, 7, 20})
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Field:
    """A little- or big-endian unsigned integer at `offset` inside its region."""

    name: str
    offset: int
    width: int
    big: bool = False
    weight: float = 1.0  # geometry (a group's size, a descriptor's size, a node's size) weighs more


@dataclass(frozen=True)
class Region:
    """A structure on the base disk (a superblock, a btree node): where mutations aim."""

    name: str
    offset: int
    length: int
    fields: tuple[Field, ...] = ()
    weight: float = 1.0

    @staticmethod
    def from_json(data: dict[str, Any]) -> Region:
        return Region(data["name"], data["offset"], data["length"], tuple(Field(**f) for f in data["fields"]),
                      data["weight"])


# A target's own mutation (an LVM metadata number, a descriptor line): returns what it did.
Mutator = Callable[[random.Random, BinaryIO, "Base"], str]


@dataclass(frozen=True, kw_only=True)
class Target:
    """One reader's fixture: how to build its base disk and where its structures are."""

    name: str
    reader: str  # what it exercises, for the report: "ext", "xfs", "qcow2 header", ...
    build: Callable[[Path], tuple[Path, list[Region]]]  # (disk, regions) written under a work dir
    sources: tuple[Path, ...]  # files whose content keys the cache (the builders)
    fixup: Callable[[BinaryIO, Base], None] | None = None  # checksums repaired after mutating
    mutators: tuple[Mutator, ...] = ()
    requires: Callable[[], str | None] = lambda: None  # why it cannot be built here, or None


@dataclass(frozen=True)
class Base:
    target: str
    disk: Path
    regions: tuple[Region, ...]
    extents: tuple[tuple[int, int], ...]  # (offset, length) of the disk's data, for random flips


@dataclass
class Outcome:
    seed: int
    case: int
    target: str
    reader: str
    mutations: list[str]
    exit_code: int | None
    seconds: float
    peak_rss: int
    stderr_tail: str
    problems: list[str] = field(default_factory=list)
    saved: str = ""  # where the mutated disk was kept (failures only)

    @property
    def ok(self) -> bool:
        return not self.problems

    def reproduce(self) -> str:
        return f"make fuzz FUZZ_SEED={self.seed} FUZZ_CASE={self.case}"


def cache_root() -> Path:
    return Path(os.environ.get("IMGPIPE_CACHE_DIR") or Path.home() / ".cache" / "imgpipe") / "fuzz"


def _key(target: Target) -> str:
    digest = hashlib.sha256(target.name.encode())
    for source in target.sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def base(target: Target, root: Path | None = None) -> Base:
    """The target's base disk, built once per content of its builders (locked: parallel sessions)."""
    out = (root or cache_root()) / f"{target.name}-{_key(target)}"
    manifest = out / "regions.json"
    if not manifest.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with _locked(out.parent / f".{target.name}.lock"):
            if not manifest.exists():
                shutil.rmtree(out, ignore_errors=True)
                work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=out.parent))
                try:
                    disk, regions = target.build(work)
                    disk.rename(work / "disk")
                    # zeros a mkfs wrote (a journal, a log) need not be copied for every case
                    subprocess.run(["fallocate", "--dig-holes", str(work / "disk")], check=True)
                    (work / "regions.json").write_text(json.dumps(
                        [asdict(r) for r in regions], indent=1))
                    for extra in work.iterdir():
                        if extra.name not in ("disk", "regions.json"):
                            _remove(extra)
                    work.rename(out)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    disk = out / "disk"
    found = tuple(Region.from_json(r) for r in json.loads(manifest.read_text()))
    return Base(target.name, disk, found, tuple(extents(disk)))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def extents(path: Path) -> Iterator[tuple[int, int]]:
    with path.open("rb") as f:
        pos, end = 0, path.stat().st_size
        while pos < end:
            try:
                pos = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                return
            hole = os.lseek(f.fileno(), pos, os.SEEK_HOLE)
            yield pos, hole - pos
            pos = hole


def sparse_copy(src: Path, dest: Path) -> None:
    """Copy keeping holes: the bases are 64 GiB virtual disks holding a few MiB."""
    with src.open("rb") as fin, dest.open("wb") as fout:
        fout.truncate(src.stat().st_size)
        for offset, length in extents(src):
            fin.seek(offset)
            fout.seek(offset)
            while length > 0:
                chunk = fin.read(min(length, 4 * MIB))
                fout.write(chunk)
                length -= len(chunk)


# Mutating ---------------------------------------------------------------------------------------

def _values(rng: random.Random, old: int, width: int) -> int:
    """A boundary value for a field of `width` bytes that held `old`."""
    top = (1 << (8 * width)) - 1
    choices = [0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, old + 1, old - 1, old * 2, old // 2,
               old << 8, old >> 8, old ^ (1 << rng.randrange(8 * width)), 1 << rng.randrange(8 * width),
               rng.getrandbits(8 * width), 512, 4096, 65536, 64 << 30, (64 << 30) // 512, (64 << 30) // 4096]
    return rng.choice(choices) & top


def _write_field(f: BinaryIO, at: int, fld: Field, rng: random.Random) -> str:
    order: Literal["big", "little"] = "big" if fld.big else "little"
    f.seek(at)
    raw = f.read(fld.width)
    if len(raw) < fld.width:
        return f"{fld.name}: beyond the end"
    old = int.from_bytes(raw, order)
    tiny = fld.weight > 1 and rng.random() < 0.5  # a geometry field: tiny sizes multiply counts
    new = rng.choice((0, 1, 2, 3, 4, 8, 16)) if tiny else _values(rng, old, fld.width)
    f.seek(at)
    f.write(new.to_bytes(fld.width, order))
    return f"{fld.name} {old:#x} -> {new:#x}"


def _flip(f: BinaryIO, at: int, rng: random.Random) -> None:
    f.seek(at)
    byte = f.read(1) or b"\0"
    f.seek(at)
    f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))


def _smash(f: BinaryIO, region: Region, rng: random.Random) -> str:
    length = min(region.length, rng.choice([1, 2, 4, 8, 16, 64]))
    start = region.offset + rng.randrange(max(1, region.length - length + 1))
    fill = rng.choice([b"\0", b"\xff", None])
    data = rng.randbytes(length) if fill is None else fill * length
    f.seek(start)
    f.write(data)
    return f"{region.name}+{start - region.offset:#x}: {length} bytes of {fill.hex() if fill else 'random'}"


def mutate(rng: random.Random, f: BinaryIO, target: Target, b: Base) -> list[str]:
    """One to three mutations, each aimed at a structure, or random bit flips in the data."""
    done = []
    weights = [r.weight for r in b.regions]
    last: Region | None = None
    for _ in range(rng.choice((1, 1, 2, 3))):
        roll = rng.random()
        if target.mutators and roll < 0.2:
            done.append(rng.choice(target.mutators)(rng, f, b))
        elif b.regions and roll < 0.85:
            # a second mutation often hits the same structure: fields that are only fatal together
            region = last if last is not None and rng.random() < 0.5 else rng.choices(b.regions, weights)[0]
            last = region
            if region.fields and rng.random() < 0.7:
                fld = rng.choices(region.fields, [fl.weight for fl in region.fields])[0]
                done.append(f"{region.name}." + _write_field(f, region.offset + fld.offset, fld, rng))
            elif rng.random() < 0.5:
                flips = rng.randint(1, 8)
                for _ in range(flips):
                    _flip(f, region.offset + rng.randrange(region.length), rng)
                done.append(f"{region.name}: {flips} bit flips")
            else:
                done.append(_smash(f, region, rng))
        else:
            total = sum(length for _, length in b.extents)
            flips = rng.randint(1, 16)
            for _ in range(flips):
                pos = rng.randrange(total)
                for offset, length in b.extents:
                    if pos < length:
                        _flip(f, offset + pos, rng)
                        break
                    pos -= length
            done.append(f"{flips} random bit flips in the data")
    if target.fixup is not None and rng.random() < 0.8:
        target.fixup(f, b)
        done.append("checksums repaired")
    return done


# Running ----------------------------------------------------------------------------------------

def _session(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != b"Z":  # state ppid pgrp session; zombies are gone
            pids.append(int(entry))
    return pids


def _rss(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def _limit_address_space() -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, resource.RLIM_INFINITY))


def imgpipe_argv() -> list[str]:
    exe = Path(sys.executable).with_name("imgpipe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "imgpipe.cli"]


@dataclass
class Run:
    exit_code: int | None
    seconds: float
    peak_rss: int
    stdout: str
    stderr: str
    killed: str  # why the case was stopped early, or ""
    leftovers: list[int]


def run_inspect(disk: Path, tmp: Path) -> Run:
    """`imgpipe inspect disk`, with `tmp` as its TMPDIR, under the limits."""
    return run_command([*imgpipe_argv(), "inspect", str(disk)], tmp)


def run_command(argv: Sequence[str], tmp: Path) -> Run:
    """argv in its own session, polled for the session's RSS, killed whole at a limit."""
    env = {**os.environ, "TMPDIR": str(tmp), "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
    out, err = tmp.parent / "stdout", tmp.parent / "stderr"
    started = time.monotonic()
    with out.open("w+b") as fout, err.open("w+b") as ferr:
        proc = subprocess.Popen(list(argv), stdout=fout, stderr=ferr,
                                stdin=subprocess.DEVNULL, env=env, preexec_fn=_limit_address_space)
        peak, killed = 0, ""
        done = threading.Event()
        status: list[tuple[int, int, resource.struct_rusage]] = []

        def reap() -> None:
            status.append(os.wait4(proc.pid, 0))
            done.set()

        threading.Thread(target=reap, daemon=True).start()
        while not done.wait(POLL_SECONDS):
            peak = max(peak, _rss(_session(proc.pid)))
            elapsed = time.monotonic() - started
            if peak > RSS_LIMIT or elapsed > WALL_SECONDS:
                killed = (f"over {RSS_LIMIT // MIB} MiB of RSS after {elapsed:.1f} s" if peak > RSS_LIMIT
                          else f"still running after {WALL_SECONDS:.0f} s")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                done.wait()
        seconds = time.monotonic() - started
        proc.returncode = 0  # reaped by wait4 above: keep Popen from waiting again
        _, wstatus, usage = status[0]
        peak = max(peak, usage.ru_maxrss * 1024)
        time.sleep(0.05)
        leftovers = [p for p in _session(proc.pid) if p != proc.pid]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        fout.seek(0)
        ferr.seek(0)
        code = os.waitstatus_to_exitcode(wstatus)
        return Run(None if killed else code, seconds, peak, fout.read().decode(errors="replace"),
                   ferr.read().decode(errors="replace"), killed, leftovers)


def judge(run: Run, allowed: frozenset[int], tmp: Path, subject: str) -> list[str]:
    """What is wrong with a finished run; `subject` (the disk's file name) must be named by every
    line on stderr: imgpipe's warnings and its error do, a library's or a tool's own output does not."""
    problems = []
    if run.killed:
        problems.append(run.killed)
    elif run.exit_code not in allowed:
        problems.append(f"exit {run.exit_code} (allowed: {', '.join(map(str, sorted(allowed)))})")
    if run.peak_rss > RSS_LIMIT and not run.killed:
        problems.append(f"peak RSS {run.peak_rss / MIB:.0f} MiB over {RSS_LIMIT // MIB} MiB")
    if "Traceback" in run.stdout or "Traceback" in run.stderr:
        problems.append("traceback")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("imgpipe: error:")]
    noise = [line for line in lines if subject not in line]
    if len(errors) > 1 or (run.exit_code and not errors and not run.killed):
        problems.append(f"{len(errors)} error lines on stderr")
    if noise and not run.killed:
        problems.append(f"{len(noise)} stray line(s) on stderr: {noise[0][:120]}")
    if run.leftovers and not run.killed:  # after a kill, the session was killed whole
        problems.append(f"{len(run.leftovers)} process(es) left running")
    left = sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
    if left and not run.killed:
        problems.append(f"left in TMPDIR: {', '.join(left[:3])}")
    return problems


def run_case(target: Target, b: Base, seed: int, case: int, work: Path, keep: Path | None) -> Outcome:
    """One case in `work` (emptied after); a failing case's disk is moved to `keep`."""
    where = work / f"case-{case}"
    tmp = where / "tmp"
    tmp.mkdir(parents=True)
    disk = where / f"{target.name}-{seed}-{case}.img"
    try:
        sparse_copy(b.disk, disk)
        rng = random.Random(f"{seed}:{target.name}:{case}")
        with disk.open("r+b") as f:
            mutations = mutate(rng, f, target, b)
        run = run_inspect(disk, tmp)
        outcome = Outcome(seed, case, target.name, target.reader, mutations, run.exit_code, run.seconds,
                          run.peak_rss, _tail(run), judge(run, ALLOWED_CODES, tmp, disk.name))
        if not outcome.ok and keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            saved = keep / disk.name
            disk.rename(saved)
            saved.with_suffix(".txt").write_text(json.dumps(asdict(outcome), indent=1) + "\n--- stdout\n"
                                                 + run.stdout + "\n--- stderr\n" + run.stderr)
            outcome.saved = str(saved)
        return outcome
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _tail(run: Run) -> str:
    text = run.stderr.strip()
    if "Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()]
        return last[-1] if last else ""
    return text.splitlines()[-1] if text else ""


def plan(targets: Sequence[Target], cases: int, first: int = 0) -> list[tuple[Target, int]]:
    """Case k exercises targets[k % len(targets)]: any run of len(targets) cases covers all."""
    return [(targets[k % len(targets)], k) for k in range(first, first + cases)]


def campaign(*, seed: int, cases: Sequence[tuple[Target, int]], work: Path, keep: Path | None, workers: int = 2,
             on_case: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run `cases` (at most 2 at once: imgpipe and qemu-nbd each want a core), in order of the plan."""
    bases = {t.name: base(t) for t in {t.name: t for t, _ in cases}.values()}
    outcomes = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, 2)) as pool:
        futures = [pool.submit(run_case, t, bases[t.name], seed, k, work, keep) for t, k in cases]
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            if on_case:
                on_case(outcome)
    return outcomes


def summary(outcomes: Sequence[Outcome], elapsed: float) -> str:
    failures = [o for o in outcomes if not o.ok]
    lines = [f"cases run: {len(outcomes)} in {elapsed:.0f} s; failures: {len(failures)}"]
    by_reader: dict[str, int] = {}
    for o in failures:
        by_reader[o.reader] = by_reader.get(o.reader, 0) + 1
    if by_reader:
        lines.append("failures by reader: " + ", ".join(f"{k} {v}" for k, v in sorted(by_reader.items())))
    for o in failures:
        lines.append(f"FAIL {o.target} seed={o.seed} case={o.case}: {'; '.join(o.problems)}")
        lines.append(f"  mutations: {'; '.join(o.mutations)}")
        if o.stderr_tail:
            lines.append(f"  stderr: {o.stderr_tail[:300]}")
        if o.saved:
            lines.append(f"  disk kept: {o.saved}")
        lines.append(f"  reproduce: {o.reproduce()}")
    if outcomes:
        slow = max(outcomes, key=lambda o: o.seconds)
        big = max(outcomes, key=lambda o: o.peak_rss)
        lines.append(f"worst time: {slow.seconds:.1f} s ({slow.target} case {slow.case}); worst peak RSS: "
                     f"{big.peak_rss / MIB:.0f} MiB ({big.target} case {big.case})")
        codes: dict[str, int] = {}
        for o in outcomes:
            codes[str(o.exit_code)] = codes.get(str(o.exit_code), 0) + 1
        lines.append("exit codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=int(os.environ.get("FUZZ_CASES") or 200))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED") or 0))
    parser.add_argument("--case", type=int, default=None if not os.environ.get("FUZZ_CASE")
                        else int(os.environ["FUZZ_CASE"]), help="run this one case only (reproduce)")
    parser.add_argument("--targets", default=os.environ.get("FUZZ_TARGETS", ""),
                        help="comma-separated target names (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="parallel cases (at most 2)")
    parser.add_argument("--keep", type=Path, default=Path(".fuzz"), help="where failing disks are kept")
    args = parser.parse_args(argv)
    import fuzz_targets  # type: ignore[import-not-found]  # tests/support, on PYTHONPATH: the targets use the tests' fixture builders

    every = fuzz_targets.available()
    chosen = [t for t in every if not args.targets or t.name in args.targets.split(",")]
    one = args.case is not None
    cases = [(chosen[args.case % len(chosen)], args.case)] if one else plan(chosen, args.cases)
    print(f"fuzz: seed {args.seed}, {len(cases)} case(s) over {', '.join(t.name for t in chosen)}", flush=True)
    skipped = fuzz_targets.unavailable()
    if skipped:
        print("fuzz: not built here: " + "; ".join(skipped), flush=True)
    started = time.monotonic()

    def progress(o: Outcome) -> None:
        mark = "ok " if o.ok else "FAIL"
        print(f"{mark} {o.target:8} case {o.case:5} exit {o.exit_code} {o.seconds:5.1f} s "
              f"{o.peak_rss / MIB:5.0f} MiB  {'; '.join(o.mutations)[:100]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="imgpipe-fuzz-") as work:
        outcomes = campaign(seed=args.seed, cases=cases, work=Path(work), keep=args.keep.resolve(),
                            workers=args.workers, on_case=progress)
    print(summary(outcomes, time.monotonic() - started))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
