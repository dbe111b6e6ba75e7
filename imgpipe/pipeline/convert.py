"""The convert command's story: prepare the source, then convert once per distinct output."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from imgpipe.conversion.convert import Options, Output, convert_image, docker_output, early_copies
from imgpipe.errors import OutputPathError, ProfileError
from imgpipe.pipeline.prepared import Given, Preparation, PreparedSource, prepare
from imgpipe.profiles import Profile
from imgpipe.progress import Progress


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


def check_outputs(src: Path, profiles: list[Profile], opts: Options) -> None:
    """What the arguments alone decide, checked before the source is even opened."""
    if opts.out_file is not None:
        if opts.out_file.resolve() == src.resolve():
            raise ProfileError(f"{src}: output would overwrite the source")
        outputs = len({p.output_key() for p in profiles})
        if outputs > 1:
            raise ProfileError(f"-o takes one output, but these profiles need {outputs} different files: "
                               "use --output-dir")
    check_destination(opts)


def convert_source(src: Path, profiles: list[Profile], opts: Options, progress: Progress | None = None, *,
                   how: Preparation | None = None) -> list[Output]:
    """Validate a docker archive, or prepare a disk image (how: what it may be) and convert it; an
    unpacked copy lives beside the outputs only while it is converted."""
    check_outputs(src, profiles, opts)
    work = opts.out_file.parent if opts.out_file else opts.out_dir
    with early_copies() as early, prepare(src, profiles, replace(how or Preparation(), work_dir=work), _given_in(opts),
                                          admitted=lambda info: early.start(info, profiles, opts)) as prepared:
        if prepared.info is None:
            return [docker_output(src, profiles)]
        return convert_image(prepared.info, profiles, conversion_options(prepared, profiles, opts), progress, early)


def check_destination(opts: Options) -> None:
    """Refuse where the outputs cannot go before any work (unpacking, inspecting, converting),
    not with an OSError once everything is converted."""
    if opts.out_file is not None and opts.out_file.is_dir():
        raise OutputPathError(f"{opts.out_file}: is a directory; -o names the output file "
                              "(--output-dir takes a directory)")
    directory = opts.out_file.parent if opts.out_file is not None else opts.out_dir
    if not directory.is_dir():
        raise OutputPathError(f"{directory}: output directory does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputPathError(f"{directory}: output directory is not writable")
