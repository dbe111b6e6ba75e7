"""Inspect a source once for all its profiles, and stop the ones that cannot boot it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from imgpipe import nbd
from imgpipe.errors import GuestRefusedError
from imgpipe.guest.facts import GuestFacts
from imgpipe.guest.inspect import inspect_guest
from imgpipe.guest.policy import refuse
from imgpipe.owner import owned_tempdir
from imgpipe.profiles import Profile
from imgpipe.source.inspect import ImageInfo

LOG = logging.getLogger("imgpipe.guest")


def inspect(info: ImageInfo, disk: nbd.Export, work_parent: Path | None = None) -> GuestFacts:
    """Facts for derivation and refusal, read through `disk`; what could not be checked is logged once.

    The partitions a tool must read from a copy go to work_parent (default $TMPDIR), not beside
    the outputs, so the output directory's space check still comes first."""
    with owned_tempdir("imgpipe-guest-", work_parent) as work:
        facts = inspect_guest(info, disk, work)
    for note in facts.unchecked:
        LOG.warning("%s: %s", info.path.name, note)
    return facts


def refuse_unbootable(info: ImageInfo, facts: GuestFacts, profiles: list[Profile],
                      properties_of: Callable[[Profile], dict[str, str]], force_boot: bool,
                      clouds: Sequence[tuple[str, frozenset[str] | None]] = ()) -> None:
    """Raises GuestRefusedError (all refusals, one line) unless forced; properties_of gives
    each profile's image properties exactly as they will be published; clouds, the target
    clouds' declared metadata paths."""
    refusals = []
    for profile in profiles:
        verdict = refuse.check(info.path, facts, profile, properties_of(profile), clouds)
        for warning in verdict.warnings:
            LOG.warning("%s", warning)
        refusals += verdict.refusals
    if refusals and not force_boot:
        raise GuestRefusedError("; ".join(refusals))
    for refusal in refusals:
        LOG.warning("forced (--force-boot): %s", refusal)
