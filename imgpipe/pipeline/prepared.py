"""A source made ready once for every stage after it: unpacked, inspected, its guest read
and judged, and the one rule for which property wins.

Every command (inspect, convert, boot-check, publish, catalog sync) starts here, so a new
guest family or a new derived property reaches all of them at once.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe.errors import ProfileError
from imgpipe.guest.facts import Fact, GuestFacts
from imgpipe.guest.policy import derive
from imgpipe.profiles import Profile
from imgpipe.source import unpack
from imgpipe.source.inspect import DEFAULT_MAX_VIRTUAL_SIZE, ImageInfo, open_source, opened

# Per profile: the properties the user gave for its image (--property, --profile-property,
# a catalog's properties), which win over everything else.
Given = Callable[[Profile], Mapping[str, str]]


def no_given(profile: Profile) -> Mapping[str, str]:
    return {}


@dataclass(frozen=True, kw_only=True)
class Preparation:
    """How to prepare: what the user claims and allows, and where the unpacked disk lives."""

    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))  # an unpacked disk lives here
    # Partitions copied for guest inspection (None: $TMPDIR, so that the output directory's
    # space check still comes first).
    scratch_dir: Path | None = None
    claimed_format: str | None = None
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE
    force_boot: bool = False
    guest_properties: bool = True  # derive properties from the guest
    refuse: bool = True  # stop profiles the guest cannot boot (inspect only reports)
    # A cache directory keyed by the source's sha256: the unpacked disk is kept there and reused.
    unpack_cache: Path | None = None
    # Each target cloud's name and the metadata paths it declares (None: undeclared): cloud-init's
    # datasource list is judged against each. Empty: no cloud (convert, boot-check).
    clouds: tuple[tuple[str, frozenset[str] | None], ...] = ()


@dataclass(frozen=True, kw_only=True)
class PreparedSource:
    source: Path  # what the user gave (errors name it)
    disk: Path  # the disk image inside it (the source itself when nothing was unpacked)
    info: ImageInfo | None  # None: the profiles publish the source as it is (docker)
    facts: GuestFacts | None
    guest_properties: bool = True
    _derived: dict[str, dict[str, Fact]] = field(default_factory=dict, repr=False)

    def derived(self, profile: Profile) -> dict[str, Fact]:
        """Properties read from the guest for this profile's target, with their evidence."""
        if self.facts is None or not self.guest_properties or not profile.converts:
            return {}
        if profile.name not in self._derived:
            self._derived[profile.name] = derive.properties(self.facts, profile)
        return self._derived[profile.name]

    def properties_for(self, profile: Profile, given: Mapping[str, str] | None = None) -> dict[str, str]:
        """The one precedence rule: what the guest says, under the profile, under what the user gave;
        except that a controller the guest can boot from replaces the profile's default one."""
        derived = {k: str(f.value) for k, f in self.derived(profile).items()}
        over = {k: v for k, v in derived.items() if k in derive.OVER_PROFILE}
        merged = {**derived, **profile.properties, **over, **(given or {})}
        if not profile.converts:
            return merged
        return merged | derive.implied(merged, self.facts, derive.hypervisor_of(profile))

    @property
    def root_partition(self) -> int | None:
        """The root inspection found (by type, else by signature): what lxc/uml extract."""
        if self.facts is None or self.facts.root is None:
            return None
        return self.facts.root.value.get("partition") or None


@contextlib.contextmanager
def prepare(src: Path, profiles: list[Profile], how: Preparation,
            given: Given = no_given, sha256: str | None = None,
            admitted: Callable[[ImageInfo], None] | None = None) -> Iterator[PreparedSource]:
    """The prepared source for as long as the caller converts or boots it.

    admitted(info) is called once the checks that let qemu open the disk passed, before its
    partition table and guest are read and while `qemu-img check` still runs: for work that
    needs only the container (a passthrough copy), never for anything that commits.

    Raises GuestRefusedError (all refusals in one line) for profiles the guest cannot boot,
    judged on the properties each image will carry, unless how.force_boot.
    """
    open_source(src)
    publish_as_is = [p for p in profiles if not p.converts]
    if publish_as_is and len(publish_as_is) != len(profiles):
        raise ProfileError(f"the {publish_as_is[0].name} profile takes a {publish_as_is[0].package}, the others "
                           "a disk image: run them separately")
    if publish_as_is:
        yield PreparedSource(source=src, disk=src, info=None, facts=None)
        return
    with _unpacked(src, how, sha256) as disk, unpack.named_as(src, disk):
        with opened(disk, how.claimed_format, how.max_virtual_size, admitted) as image:
            # The guest readers load here, while `qemu-img check`, qemu-nbd and an early copy
            # already run on the other core, not before the source is even opened.
            from imgpipe.guest import gate

            facts = gate.inspect(image.info, image.disk, how.scratch_dir) if profiles or not how.refuse else None
        info = image.info
        prepared = PreparedSource(source=src, disk=disk, info=info, facts=facts,
                                  guest_properties=how.guest_properties)
        if facts is not None and how.refuse:
            gate.refuse_unbootable(info, facts, profiles, lambda p: prepared.properties_for(p, given(p)),
                                   how.force_boot, how.clouds)
        yield prepared


def _unpacked(src: Path, how: Preparation, sha256: str | None) -> contextlib.AbstractContextManager[Path]:
    if how.unpack_cache is not None and sha256 is not None:
        return contextlib.nullcontext(unpack.cached(src, sha256, how.unpack_cache, how.max_virtual_size))
    return unpack.unpacked(src, how.work_dir, how.max_virtual_size)
