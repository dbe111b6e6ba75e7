"""Catalog images may turn guest-derived properties off, per image."""

from __future__ import annotations

from pathlib import Path

from catalog_texts import GOOD, load


def test_guest_properties_default_on_and_per_image_off(tmp_path: Path) -> None:
    text = GOOD.replace('    tags: [lts]\n', '    tags: [lts]\n    guest_properties: false\n')
    ubuntu, debian = load(tmp_path, text).images
    assert ubuntu.guest_properties is False and debian.guest_properties is True
