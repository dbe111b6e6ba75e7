"""The inspect command's story: the source prepared like any other, reported for every profile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from imgpipe.guest.policy import derive
from imgpipe.pipeline.prepared import Preparation, PreparedSource, prepare
from imgpipe.profiles import Profile


def inspect_source(src: Path, how: Preparation, known: dict[str, Profile]) -> tuple[PreparedSource, dict[str, Any]]:
    """The prepared source (its disk no longer kept) and the report: the image, the guest and
    what each profile would derive from it. Nothing is refused: inspect only tells."""
    with prepare(src, [], replace(how, refuse=False)) as prepared:
        assert prepared.info is not None and prepared.facts is not None
        derived = {name: derive.to_dict(prepared.derived(p)) for name, p in known.items()}
        data = prepared.info.to_dict() | {"path": str(src), "guest": prepared.facts.to_dict(),
                                          "derived_properties": derived}
    return prepared, data
