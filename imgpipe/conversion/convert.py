"""One source image -> one output file per distinct target format, all or nothing.

Profiles that need byte-identical output (kvm, qemu and ironic all want plain qcow2) share
one conversion; the Xen tgz wraps the same vhd that hyperv-gen1 uses. Every output is
written under a temp name, re-inspected like Glance will inspect it, optionally compared
with the source, and only renamed into place once every output of the run succeeded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpipe import nbd, qemu
from imgpipe.conversion import atomic, packaging, passthrough
from imgpipe.conversion.packages import PACKAGERS
from imgpipe.errors import ConversionError, FormatMismatchError, NoSpaceError, ProfileError, UnsafeImageError
from imgpipe.profiles import Profile
from imgpipe.progress import Progress
from imgpipe.runner import CommandFailed
from imgpipe.source import partitions
from imgpipe.source.inspect import QEMU_DRIVER, ImageInfo, detect_format, inspect_image, inspector_module, open_source
from imgpipe.units import human_size

if TYPE_CHECKING:
    from imgpipe.conversion.vmdk_stream import Disk

EXTENSION = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vpc": "vhd", "vhdx": "vhdx"}
SOURCE_SUFFIXES = {".qcow2", ".img", ".raw", ".vmdk", ".vhd", ".vhdx", ".vdi", ".tar"}
SPACE_MARGIN = 64 << 20
# Reads queued on each qemu-nbd for the streamOptimized writer: 4 MiB at 1 MiB batches.
READS_IN_FLIGHT = 4


@dataclass
class Output:
    """A finished file and everything later steps (upload, reports) need to know about it."""

    path: Path
    profiles: list[str]
    disk_format: str
    container_format: str
    virtual_size: int
    size: int = 0
    seconds: float = 0.0
    verified: bool = False
    engine: str = "qemu"
    docker_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


@dataclass
class Options:
    """How to convert; what the source is allowed to be is pipeline.prepared.Preparation's."""

    out_dir: Path = Path(".")
    out_file: Path | None = None
    verify: bool = False
    engine: str = "auto"
    partition: int | None = None
    jobs: int | None = None
    # Per profile, properties its image will carry beyond the profile's own (publish: derived and
    # user ones): an OVA's descriptor states firmware, guest OS and controller from them.
    properties: dict[str, dict[str, str]] = field(default_factory=dict)
    # publish: a passthrough output is the source itself, not a copy of it
    in_place: bool = False


@dataclass
class _Base:
    """One qemu-img conversion and the outputs built from its result."""

    profile: Profile
    window: qemu.Source
    outputs: list[tuple[Profile, Output]] = field(default_factory=list)
    passthrough: bool = False

    @property
    def is_output(self) -> bool:
        return any(p.package is None for p, _ in self.outputs)


def docker_output(src: Path, profiles: list[Profile]) -> Output:
    """A docker archive is published as it is, once it is known to be a complete one."""
    name = packaging.docker_repo_tag(src)
    size = src.stat().st_size
    return Output(src, [p.name for p in profiles], "raw", "docker", size, size,
                  verified=True, engine="none", docker_name=name)


def converted_size(path: Path, profile: Profile) -> int:
    """Check that an already converted file is what the profile uploads; its virtual size."""
    open_source(path)
    if profile.package:
        return PACKAGERS[profile.package].virtual_size(path)
    info = inspect_image(path)
    assert profile.output is not None
    if info.format != profile.output.format:
        raise FormatMismatchError(f"{path}: content is {info.format}, profile {profile.name} "
                                  f"uploads {profile.disk_format}")
    return info.virtual_size


def conversion_groups(profiles: list[Profile]) -> list[list[Profile]]:
    """Profiles whose outputs come from one conversion, so each is converted once."""
    groups: dict[tuple[Any, ...], list[Profile]] = {}
    for p in profiles:
        groups.setdefault(p.output_key()[:-1], []).append(p)
    return list(groups.values())


def convert_image(info: ImageInfo, profiles: list[Profile], opts: Options,
                  progress: Progress | None = None, early: EarlyCopies | None = None) -> list[Output]:
    """early: passthrough copies started while the guest was inspected (taken over here)."""
    bases = _plan(info, profiles, opts)
    outputs = [o for b in bases for _, o in b.outputs]
    if opts.out_file and len(outputs) > 1:
        raise ProfileError(f"-o takes one output, but these profiles need {len(outputs)} "
                           "different files: use --output-dir")
    for out in outputs:
        if out.path.resolve() == info.path.resolve() and out.engine != "passthrough":
            raise ProfileError(f"{out.path}: output would overwrite the source")
    _check_space(bases, opts.out_dir if not opts.out_file else opts.out_file.parent)
    temps: list[tuple[Path, Path]] = []
    scratch: list[Path] = []
    try:
        for base in bases:
            _run_base(base, opts, progress, temps, scratch, early)
        for temp, final in temps:
            atomic.commit(temp, final)
    finally:
        atomic.discard([t for t, _ in temps] + scratch)
    for out in outputs:
        out.size = out.path.stat().st_size
    return outputs


class _Cancelled(Exception):
    """An early conversion stopped because the source was refused."""


class EarlyCopies:
    """Passthrough copies and native streamOptimized conversions started while the guest is
    still being inspected.

    Neither needs anything from the guest, only the checks that let qemu open the file
    (format_inspector, `qemu-img info`): a passthrough output is the verified container byte
    for byte, and the streamOptimized writer reads the whole disk through qemu-nbd, as the
    inspection itself does. So the copy (a full one where the filesystem has no reflinks) or
    the conversion overlaps the guest reads and `qemu-img check`. Nothing is committed early:
    convert_image takes the temps over once the source is prepared; a refusal or a failed
    check stops a conversion at its next batch and leaves the temps to be discarded here.
    """

    def __init__(self) -> None:
        self._copies: dict[Path, tuple[Path, threading.Thread, list[BaseException]]] = {}
        self._converted: set[Path] = set()  # the finals whose temp is a conversion, not a copy
        self._cancel = threading.Event()

    def start(self, info: ImageInfo, profiles: list[Profile], opts: Options) -> None:
        """Start what can start; info has no partition table yet, so profiles that extract a
        partition are left to convert_image (as is any output planned differently there)."""
        whole = [p for p in profiles if not p.extract and not p.package]
        for base in _plan(info, whole, opts):
            (_, out), *more = base.outputs
            native = not base.passthrough and _use_native(base.profile, opts.engine)
            if not (base.passthrough or native) or more or out.path == base.window.path \
                    or out.path in self._copies:
                continue
            need = base.window.path.stat().st_size if base.passthrough else qemu.measure_raw(base.window)
            if shutil.disk_usage(out.path.parent).free < need + SPACE_MARGIN:
                continue  # convert_image's space check says so, before anything is written
            tmp = atomic.temp_beside(out.path)
            failed: list[BaseException] = []
            if native:
                self._converted.add(out.path)
                assert base.profile.output is not None
                args: tuple[Any, ...] = (base.window, tmp, out.path.name,
                                         base.profile.output.options["adapter_type"], opts.jobs, failed)
                thread = threading.Thread(target=self._convert, args=args, name=f"convert {out.path.name}",
                                          daemon=True)
            else:
                thread = threading.Thread(target=self._copy, args=(base.window.path, tmp, failed),
                                          name=f"copy {out.path.name}", daemon=True)
            self._copies[out.path] = (tmp, thread, failed)
            thread.start()

    @staticmethod
    def _copy(src: Path, tmp: Path, failed: list[BaseException]) -> None:
        try:
            passthrough.copy(src, tmp)
            atomic.fsync_path(tmp)
        except Exception as exc:  # re-raised by take() on the caller's thread
            failed.append(exc)

    def _convert(self, window: qemu.Source, tmp: Path, name: str, adapter: str, jobs: int | None,
                 failed: list[BaseException]) -> None:
        def cancelled(_: float) -> None:
            if self._cancel.is_set():
                raise _Cancelled

        try:
            _native_stream_optimized(window, tmp, name, adapter, jobs, cancelled)
        except Exception as exc:  # re-raised by take() on the caller's thread
            failed.append(exc)

    def take(self, final: Path, *, converted: bool = False) -> Path | None:
        """The finished temp for final (the caller now owns it), or None; converted: a
        streamOptimized conversion is wanted, not a copy (any other is left to discard())."""
        if final not in self._copies or (final in self._converted) != converted:
            return None
        tmp, thread, failed = self._copies.pop(final)
        thread.join()
        if failed:
            tmp.unlink(missing_ok=True)
            raise failed[0]
        return tmp

    def discard(self) -> None:
        self._cancel.set()
        for tmp, thread, _ in self._copies.values():
            thread.join()
            tmp.unlink(missing_ok=True)
        self._copies.clear()


@contextlib.contextmanager
def early_copies() -> Iterator[EarlyCopies]:
    early = EarlyCopies()
    try:
        yield early
    finally:
        early.discard()


def _plan(info: ImageInfo, profiles: list[Profile], opts: Options) -> list[_Base]:
    bases: dict[tuple[Any, ...], _Base] = {}
    taken: set[str] = set()
    stem = _stem(info.path)
    for profile in profiles:
        assert profile.output is not None
        window = _window(info, profile, opts.partition)
        # A packaged output (OVA, Xen tgz) never passes: it converts apart from the plain one that does.
        passes = passthrough.applies(info, profile, window)
        key = (*profile.output_key()[:-1], passes)
        base = bases.setdefault(key, _Base(profile, window, passthrough=passes))
        shared = next((o for p, o in base.outputs if p.package == profile.package), None)
        if shared is not None:
            shared.profiles.append(profile.name)
            continue
        path = opts.out_file or opts.out_dir / _file_name(stem, profile, taken)
        if base.passthrough and opts.in_place:
            path = info.path
        vsize = window.size if window.size is not None else info.virtual_size
        base.outputs.append((profile, Output(path, [profile.name], profile.disk_format,
                                             profile.container_format, vsize,
                                             engine="passthrough" if base.passthrough else "qemu")))
    return list(bases.values())


def _file_name(stem: str, profile: Profile, taken: set[str]) -> str:
    """Name outputs by what they are, so a file's name does not depend on which profiles asked.

    e.g. disk.qcow2 (kvm, qemu, ironic), disk-rootfs.raw (lxc, uml), disk-streamOptimized.vmdk;
    a custom profile whose output would collide with another's gets its profile name instead.
    """
    assert profile.output is not None
    parts = [stem]
    if profile.extract:
        parts.append("rootfs")
    if profile.output.format == "vmdk":
        parts.append(profile.output.options.get("subformat", "monolithicSparse"))
    if profile.output.compress:
        parts.append("compressed")
    ext = profile.kind.extension if profile.kind else EXTENSION[profile.output.format]
    name = f"{'-'.join(parts)}.{ext}"
    if name in taken:
        name = f"{stem}-{profile.name}.{ext}"
    taken.add(name)
    return name


def _stem(path: Path) -> str:
    name = path.name
    while Path(name).suffix.lower() in SOURCE_SUFFIXES:
        name = Path(name).stem
    return name or "image"


def _window(info: ImageInfo, profile: Profile, number: int | None) -> qemu.Source:
    """The part of the source a profile converts: the whole disk, or its root partition."""
    if profile.extract != "root-partition" or info.table is None:
        return info.source()
    try:
        if number is None:
            part = partitions.root_partition(info.partitions)
        else:
            part = next(p for p in info.partitions if p.number == number)
    except StopIteration:
        raise UnsafeImageError(f"{info.path}: has no partition {number}") from None
    except partitions.PartitionTableError as exc:
        raise UnsafeImageError(f"{info.path}: {exc} (profile {profile.name} needs one; "
                               "pick it with --partition)") from exc
    return info.window(part)


def _check_space(bases: list[_Base], directory: Path) -> None:
    """Refuse before converting rather than fail half-way with ENOSPC."""
    if not directory.is_dir():
        raise ConversionError(f"{directory}: output directory does not exist")
    need = SPACE_MARGIN
    measured: dict[qemu.Source, int] = {}  # most bases read the same whole disk
    for base in bases:
        if base.passthrough:
            need += 0 if base.outputs[0][1].path == base.window.path else base.window.path.stat().st_size
            continue
        if base.window not in measured:
            measured[base.window] = qemu.measure_raw(base.window)
        copies = len(base.outputs) + (0 if base.is_output else 1)
        need += measured[base.window] * copies
    free = shutil.disk_usage(directory).free
    if need > free:
        raise NoSpaceError(f"{directory}: needs about {human_size(need)} for these outputs, "
                           f"only {human_size(free)} free")


def _run_base(base: _Base, opts: Options, progress: Progress | None,
              pairs: list[tuple[Path, Path]], scratch: list[Path], early: EarlyCopies | None = None) -> None:
    """Convert once, check, then derive each output as a (temp, final) pair.

    Temps are recorded before they are written so the caller can always clean them up.
    """
    profile = base.profile
    assert profile.output is not None
    first = base.outputs[0][1]
    started = time.monotonic()
    if base.passthrough:
        _pass_through(base, opts, pairs, started, early)
        return
    label = first.path.name
    report = (lambda pct: progress(label, pct, first.virtual_size)) if progress else None
    converted = early.take(first.path, converted=True) if early is not None else None
    if converted is not None:  # only native streamOptimized starts early
        tmp, engine = converted, "native"
        scratch.append(tmp)
        if report is not None:
            report(100.0)
    else:
        tmp = atomic.temp_beside(first.path)
        scratch.append(tmp)
        # The vmdk's descriptor names its file: inside an OVA that is the member, not the .ova.
        package = base.outputs[0][0].package
        disk_name = PACKAGERS[package].disk_name(first.path) if package else first.path.name
        engine = _convert_one(base.window, tmp, disk_name, profile, opts, report)
    _reinspect(tmp, profile.output.format, first.virtual_size, label)
    verified = False
    if opts.verify:
        _compare(base.window, qemu.Source(tmp, profile.output.format), label)
        verified = True
    for p, out in base.outputs:
        write = PACKAGERS[p.package].write if p.package else None
        if write is not None:
            packed = atomic.temp_beside(out.path)
            pairs.append((packed, out.path))
            with packed.open("wb") as f:
                write(tmp, f, out.path, out.virtual_size, opts.properties.get(p.name, p.properties))
        else:
            scratch.remove(tmp)
            pairs.append((tmp, out.path))
        out.verified, out.engine = verified, engine
        out.seconds = time.monotonic() - started


def _pass_through(base: _Base, opts: Options, pairs: list[tuple[Path, Path]], started: float,
                  early: EarlyCopies | None) -> None:
    """The verified source is the output: used where it is, or copied (reflinked) under a temp name.

    A byte-identical copy compares equal by construction, so --verify has nothing to run.
    """
    (_, out), = base.outputs  # passthrough never applies to packaged outputs
    if out.path != base.window.path:
        copied = early.take(out.path) if early is not None else None
        if copied is not None:
            pairs.append((copied, out.path))
        else:
            tmp = atomic.temp_beside(out.path)
            pairs.append((tmp, out.path))
            passthrough.copy(base.window.path, tmp)
    out.verified = opts.verify
    out.seconds = time.monotonic() - started


def _convert_one(window: qemu.Source, dest: Path, final_name: str, profile: Profile, opts: Options,
                 report: Callable[[float], None] | None) -> str:
    assert profile.output is not None
    out = profile.output
    try:
        if _use_native(profile, opts.engine):
            _native_stream_optimized(window, dest, final_name, out.options["adapter_type"], opts.jobs, report)
            return "native"
        qemu.convert(window, dest, out.format, out.options, out.compress, report)
    except CommandFailed as exc:
        raise ConversionError(f"{window.path}: conversion for {profile.name} failed: {exc}") from exc
    return "qemu"


def _use_native(profile: Profile, engine: str) -> bool:
    """Only streamOptimized has a native writer; every other format always uses qemu-img."""
    assert profile.output is not None
    stream = profile.output.format == "vmdk" and profile.output.options.get("subformat") == "streamOptimized"
    return stream and engine != "qemu"


def _native_stream_optimized(window: qemu.Source, dest: Path, final_name: str, adapter: str,
                             jobs: int | None, report: Callable[[float], None] | None) -> None:
    """qemu-nbd inflates the source while imgpipe deflates grains on every core: no raw copy
    first, so reading and writing overlap and nothing the size of the disk is written twice.
    A whole raw source is read directly, its holes skipped by SEEK_HOLE."""
    from imgpipe.conversion.vmdk_stream import write_stream_optimized  # ISA-L: only for this writer

    workers = jobs or os.cpu_count() or 1
    try:
        with _disk(window, workers) as disk, dest.open("wb") as f:
            write_stream_optimized(disk, f, adapter_type=adapter, jobs=workers, extent_name=final_name,
                                   on_progress=report)
    except nbd.NbdError as exc:
        raise ConversionError(f"{window.path}: reading it for the streamOptimized writer failed: {exc}") from exc


@contextlib.contextmanager
def _disk(window: qemu.Source, workers: int) -> Iterator[Disk]:
    from imgpipe.conversion.vmdk_stream import Disk, raw_disk

    if window.format == "raw" and window.offset is None:
        with raw_disk(window.path) as disk:
            yield disk
        return
    extents = qemu.data_extents(window)
    with nbd.pipelined(window, str(window.path), workers, READS_IN_FLIGHT) as reader:
        yield Disk(reader.size, lambda: iter(extents),
                   lambda offset, length: reader.submit(offset, length).result, str(window.path))


def _reinspect(path: Path, out_format: str, virtual_size: int, label: str) -> None:
    """Check the output the way Glance will: content format, safety checks, virtual size."""
    fi = inspector_module()
    try:
        inspector = detect_format(path)
    except fi.ImageFormatError as exc:
        raise ConversionError(f"{label}: output is ambiguous: {exc}") from exc
    detected = str(inspector) if inspector else "unknown"
    if inspector is None or QEMU_DRIVER.get(detected) != out_format:
        raise ConversionError(f"{label}: output detected as {detected}, expected {out_format}")
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        raise ConversionError(f"{label}: output fails safety checks: {exc}") from exc
    actual = int(qemu.info(path, out_format)["virtual-size"])
    if actual != virtual_size:
        raise ConversionError(f"{label}: output virtual size {actual} != source {virtual_size}")


def _compare(window: qemu.Source, out: qemu.Source, label: str) -> None:
    result = qemu.compare(window, out)
    if result.returncode != 0:
        raise ConversionError(f"{label}: qemu-img compare: {result.stdout.strip() or 'content differs'}")
