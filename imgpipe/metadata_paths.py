"""The two ways OpenStack hands a guest its metadata: the words guest policy, clouds.yaml and a
catalog share (a cloud declares the paths it offers, policy judges a guest against them)."""

from __future__ import annotations

from typing import Literal, get_args

MetadataPath = Literal["config-drive", "metadata-service"]
CONFIG_DRIVE: MetadataPath = "config-drive"
METADATA_SERVICE: MetadataPath = "metadata-service"
NAMES: tuple[str, ...] = get_args(MetadataPath)
