"""Sizes as people write them: what the options accept and what messages print."""

from __future__ import annotations

import pytest

from imgpipe.units import human_size, parse_size, size_arg


@pytest.mark.parametrize(("text", "size"), [("1099511627776", 1 << 40), ("1T", 1 << 40), ("1TiB", 1 << 40),
                                            ("1tb", 1 << 40), ("512M", 512 << 20), ("1.5G", 3 << 29),
                                            ("64 MiB", 64 << 20), ("0", 0)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1Q", "-1G", "1.2.3G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size like 512M, 20G or 1T"):
        parse_size(text)


def test_sizes_print_as_they_are_typed_and_read() -> None:
    assert [size_arg(n) for n in (1 << 40, 512 << 20, 3 << 29, 1000)] == ["1T", "512M", "1536M", "1000"]
    assert [human_size(n) for n in (512, 69 << 20, 2 << 30)] == ["512 B", "69.0 MiB", "2.0 GiB"]
    assert all(parse_size(size_arg(n)) == n for n in (1 << 40, 7 << 30, 12345))
