"""The convert command's story: prepare the source, then convert once per distinct output."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from imgpipe.conversion.convert import Options, Output, Progress, convert_image, docker_output
from imgpipe.errors import ProfileError
from imgpipe.pipeline.prepared import Given, Preparation, PreparedSource, prepare
from imgpipe.profiles import Profile
from imgpipe.source.inspect import DEFAULT_MAX_VIRTUAL_SIZE


def preparation(opts: Options, work_dir: Path, **overrides: Any) -> Preparation:
    """What the run's options say about preparing its source."""
    how = Preparation(work_dir=work_dir, claimed_format=opts.claimed_format,
                      max_virtual_size=opts.max_virtual_size or DEFAULT_MAX_VIRTUAL_SIZE, force_boot=opts.force_boot)
    return replace(how, **overrides)


def conversion_options(prepared: PreparedSource, profiles: list[Profile], opts: Options,
                       given: Given | None = None) -> Options:
    """lxc/uml extract the root inspection found; descriptors written now (the OVA's) state the
    properties each image will carry (given: the user's; default: opts.properties)."""
    if given is None:
        given = _given_in(opts)
    partition = opts.partition if opts.partition is not None else prepared.root_partition
    return replace(opts, partition=partition,
                   properties={p.name: prepared.properties_for(p, given(p)) for p in profiles})


def _given_in(opts: Options) -> Given:
    return lambda profile: opts.properties.get(profile.name, {})


def convert_source(src: Path, profiles: list[Profile], opts: Options,
                   progress: Progress | None = None) -> list[Output]:
    """Validate a docker archive, or prepare a disk image and convert it; an unpacked copy lives
    beside the outputs only while it is converted."""
    if opts.out_file and opts.out_file.resolve() == src.resolve():
        raise ProfileError(f"{src}: output would overwrite the source")
    work = opts.out_file.parent if opts.out_file else opts.out_dir
    with prepare(src, profiles, preparation(opts, work), _given_in(opts)) as prepared:
        if prepared.info is None:
            return [docker_output(src, profiles)]
        return convert_image(prepared.info, profiles, conversion_options(prepared, profiles, opts), progress)
