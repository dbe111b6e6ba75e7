"""The ways bytes get into Glance, as a choice: light to import, the CLI offers it at start-up."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ImportMethod(str, enum.Enum):
    """auto: PUT where the cloud allows it, glance-direct where it must (stores, PUT forbidden)."""

    auto = "auto"
    put = "put"
    glance_direct = "glance-direct"
    web_download = "web-download"


@dataclass(frozen=True)
class Placement:
    """How and where an image goes: the options upload, publish and catalog share."""

    method: ImportMethod = ImportMethod.auto
    stores: tuple[str, ...] = ()
    all_stores: bool = False
    # False: all_stores_must_succeed (a failing store fails the upload, the image is deleted).
    allow_partial_stores: bool = False
