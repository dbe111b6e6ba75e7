"""inspect's text report: the image, its guest, and the derived properties grouped so that what
every profile shares is shown once and only the differences per profile. --evidence adds where
each fact was read (--json always carries it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from imgpipe import render
from imgpipe.units import human_size

if TYPE_CHECKING:
    from imgpipe.guest.facts import Fact, GuestFacts
    from imgpipe.source.inspect import ImageInfo

Derived = dict[str, dict[str, dict[str, Any]]]  # profile -> property -> {"value", "evidence"}
Row = tuple[str, ...]


def show(src: Path, info: ImageInfo, facts: GuestFacts, derived: Derived, evidence: bool = False) -> None:
    for title, rows in ((str(src), _image_rows(info)), ("guest", _guest_rows(facts, evidence)),
                        _derived_section(derived, evidence)):
        render.out.print(title, style="bold", highlight=False, soft_wrap=True)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        for _ in rows[0][1:] if rows else ():
            grid.add_column(overflow="fold")
        for row in rows:
            grid.add_row("  " + row[0], *row[1:])
        with render.out.capture() as captured:  # a grid pads every line to its width: no trailing blanks
            render.out.print(grid, highlight=False)
        render.out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def _image_rows(info: ImageInfo) -> list[Row]:
    fmt = info.format if info.detected == info.format else f"{info.format} (detected {info.detected})"
    parts = ", ".join(f"{p.number} {p.kind} {human_size(p.size)}" for p in info.partitions)
    return [("format", f"{fmt}, {human_size(info.virtual_size)} virtual, {human_size(info.actual_size)} on disk"),
            ("partitions", f"{info.table}: {parts}" if info.table else "none (one filesystem or unpartitioned)"),
            ("verdict", "safe: " + "; ".join(info.checks))]


def _guest_rows(facts: GuestFacts, evidence: bool) -> list[Row]:
    """One row per guest fact. Facts not found for this family (a Windows guest has no
    os-release) are left out, not shown as missing."""

    def told(value: object, fact: Fact | None) -> str:
        return f"{value} (from {fact.evidence})" if evidence and fact is not None else str(value)

    paths = [told(f"uefi {f.value['path']} ({f.value['architecture']})", f) for f in facts.uefi_loaders]
    paths += [told(f"bios {facts.bios.value}", facts.bios)] if facts.bios else []
    rows: list[Row] = [("boot paths", ", ".join(paths) or "none")]
    ci = facts.cloud_init
    windows = facts.windows is not None
    shown = (("architecture", facts.architecture, True),
             ("root filesystem", facts.root, not windows), ("separate /boot", facts.boot, False),
             ("os-release", facts.os_release, not windows), ("os type", facts.os_type, True),
             ("windows version", facts.windows, False), ("init", facts.init, not windows),
             ("guest agent", facts.guest_agent, not windows), ("kernel", facts.kernel, False),
             ("storage drivers", facts.drivers, not windows), ("windows drivers", facts.windows_drivers, False),
             ("cloud-init", ci.installed if ci else None, not windows),
             ("cloud-init version", ci.version if ci else None, False),
             ("cloud-init datasource_list", ci.datasource_list if ci and ci.installed else None, False),
             ("cloud-init disabled", ci.disabled if ci else None, False),
             ("cloud-init default user", ci.default_user if ci else None, False),
             ("cloudbase-init", facts.cloudbase_init, windows))
    for label, fact, always in shown:
        if fact is None and not always:
            continue
        value = fact.value if fact else None
        if isinstance(value, dict):
            value = (", ".join(value) or "none of the known ones") if label.endswith("drivers") \
                else " ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        elif isinstance(value, bool):
            value = ("installed" if value else "not installed") if label == "cloud-init" else ("yes" if value else "no")
        elif value is None and fact is not None and label == "cloud-init datasource_list":
            value = "not set (cloud-init's built-in list)"
        rows.append((label, told(value, fact) if fact else "not found"))
    if facts.architecture_conflict:
        rows.append(("architecture conflict", facts.architecture_conflict))
    if facts.secure_boot is not None:
        rows.append(("secure boot", told(_chain(facts.secure_boot.value), facts.secure_boot)))
    rows += [("cloud-init note", note) for note in (ci.notes + ci.unread if ci else [])]
    rows += [("not checked", note) for note in facts.unchecked]
    return rows


def _chain(chain: dict[str, Any]) -> str:
    """"passes: BOOTX64.EFI <- Microsoft Corporation UEFI CA 2011, grubx64.efi <- Debian Secure Boot CA, ..."."""
    steps = ", ".join(f"{s['path'].split(' ')[-1].rsplit('/', 1)[-1]} <- {s['trusted_by'] or 'untrusted'}"
                      for s in chain["steps"])
    verdict = "passes Microsoft-keyed firmware" if chain["passes"] else f"refused: {chain['refused']}"
    unread = f"; not read: {'; '.join(chain['unread'])}" if chain["unread"] else ""
    return f"{verdict} ({steps}){unread}"


def _derived_section(derived: Derived, evidence: bool) -> tuple[str, list[Row]]:
    """Properties derived for the same profiles on one row: what all share first ('all N
    profiles'), then each difference with the profiles it is derived for."""
    takers = [name for name, props in derived.items() if props]
    others = sorted(set(derived) - set(takers))
    title = "derived properties" + (f" ({_names(others)}: none)" if others else "")
    if not takers:
        return title, [("none", "no profile derives properties from this source")]
    by_value: dict[tuple[str, str], list[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for name in takers:
        for key, d in derived[name].items():
            by_value.setdefault((key, str(d["value"])), []).append(name)
            why.setdefault((key, str(d["value"])), str(d["evidence"]))
    every = f"all {len(takers)} profiles" if len(takers) > 2 else _names(takers)
    rows: list[tuple[str, str, str]] = []
    for (key, value), names in sorted(by_value.items(), key=lambda kv: -len(kv[1])):
        rows.append((f"{key}={value}", every if len(names) == len(takers) else _names(names),
                     why[(key, value)]))
    if evidence:
        return title, [(prop, names, f"from {found}") for prop, names, found in rows]
    grouped: dict[str, list[str]] = {}
    for prop, takers_of, _ in rows:
        grouped.setdefault(takers_of, []).append(prop)
    return title, [(" ".join(props), takers_of) for takers_of, props in grouped.items()]


def _names(names: Sequence[str]) -> str:
    return ", ".join(sorted(names))
