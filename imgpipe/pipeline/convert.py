"""The convert command's story: unpack (compressed, OVA), inspect, refuse what cannot boot,
then convert once per distinct output."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from imgpipe.conversion.convert import Options, Output, Progress, convert_image, docker_output
from imgpipe.errors import ProfileError
from imgpipe.guest import derive, gate
from imgpipe.guest.facts import GuestFacts
from imgpipe.profiles import Profile
from imgpipe.source.inspect import DEFAULT_MAX_VIRTUAL_SIZE, ImageInfo, inspect_image, open_source
from imgpipe.source.unpack import unpacked


def convert_source(src: Path, profiles: list[Profile], opts: Options,
                   progress: Progress | None = None) -> list[Output]:
    """Entry point: validates a docker archive, or unpacks (compressed, OVA), inspects and converts
    a disk image; the unpacked copy lives beside the outputs only while it is converted."""
    if any(p.package == "docker-archive" for p in profiles):
        source_info(src, profiles, opts)  # a docker archive, or ProfileError for a mix
        return [docker_output(src, profiles)]
    open_source(src)
    if opts.out_file and opts.out_file.resolve() == src.resolve():
        raise ProfileError(f"{src}: output would overwrite the source")
    work = opts.out_file.parent if opts.out_file else opts.out_dir
    with unpacked(src, work, opts.max_virtual_size or DEFAULT_MAX_VIRTUAL_SIZE) as disk:
        info = source_info(disk, profiles, opts)
        assert info is not None
        facts = gate.examine(info, profiles, lambda p: p.properties, opts.force_boot)
        return convert_image(info, profiles, with_derived(with_root(opts, facts), facts, profiles), progress)


def with_root(opts: Options, facts: GuestFacts) -> Options:
    """lxc/uml extract the root partition inspection found (by type, else by signature)."""
    if opts.partition is None and facts.root is not None and facts.root.value["partition"]:
        return replace(opts, partition=facts.root.value["partition"])
    return opts


def with_derived(opts: Options, facts: GuestFacts, profiles: list[Profile]) -> Options:
    """What inspection derived (firmware, guest OS) reaches descriptors written now, the OVA's;
    profile and given properties win over it, as they do on the image."""
    return replace(opts, properties={p.name: {**{k: str(f.value) for k, f in derive.properties(facts, p).items()},
                                              **p.properties, **opts.properties.get(p.name, {})}
                                     for p in profiles})


def source_info(src: Path, profiles: list[Profile], opts: Options) -> ImageInfo | None:
    """Inspect a disk image source once (None: the profiles take a docker archive)."""
    open_source(src)
    docker = [p for p in profiles if p.package == "docker-archive"]
    if docker and len(docker) != len(profiles):
        raise ProfileError("the docker profile takes a docker save archive, the others a disk image: "
                           "run them separately")
    if docker:
        return None
    kwargs = {"max_virtual_size": opts.max_virtual_size} if opts.max_virtual_size else {}
    return inspect_image(src, opts.claimed_format, **kwargs)
