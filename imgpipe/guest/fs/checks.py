"""Superblock sanity checks as data, in the spirit of oslo.utils' format_inspector: each reader
keeps a table of named checks over the fields it parsed, run in order (a later check may divide
by a field an earlier one proved non-zero), so a refusal names the field that failed, as the
kernel's own mount-time checks (ext4_fill_super, xfs_validate_sb_common, btrfs_validate_super) do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

Fields = Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class Check:
    field: str  # the on-disk field's own name (s_blocks_per_group, sb_agcount), shown in the refusal
    rule: str  # what a valid filesystem has there, for a person: "a power of two from 64 to 1024"
    holds: Callable[[Fields], bool]


def verify(checks: Iterable[Check], fields: Fields, corrupt: Callable[[str], Exception]) -> None:
    """Raise corrupt("<field> is <value>: <rule>") for the first check that fails."""
    for check in checks:
        if not check.holds(fields):
            raise corrupt(f"{check.field} is {fields[check.field]}: {check.rule.format_map(fields)}")


def power_of_two(n: int) -> bool:
    return n > 0 and not n & (n - 1)
