"""Imports flow one way: no cycle among imgpipe's modules, counting imports inside functions and
under TYPE_CHECKING (a lazy import hides a cycle from start-up, not from the design); the cloud
layer knows nothing of conversion, guest inspection or the pipeline that drives it; guest
inspection knows no later stage; boot-check reads no guest (it asks guest's controller table only)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imgpipe

PACKAGE = Path(imgpipe.__file__).parent
CLOUD_MUST_NOT_IMPORT = ("imgpipe.conversion", "imgpipe.guest", "imgpipe.pipeline")
LATER_STAGES = ("imgpipe.boot", "imgpipe.conversion", "imgpipe.cloud", "imgpipe.catalog", "imgpipe.pipeline",
                "imgpipe.cli")
# stage -> (packages it must not import, exceptions inside them)
STAGE_RULES = {
    "imgpipe.cloud": (CLOUD_MUST_NOT_IMPORT, ()),
    "imgpipe.guest": (LATER_STAGES, ()),
    "imgpipe.boot": (("imgpipe.guest", *LATER_STAGES[1:]), ("imgpipe.guest.policy.controllers",)),
}


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file for every module of the package at `root` (a package is its __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that this module imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    return {t for t in targets if t in known and t != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = _modules(root)
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts, or None (iterative depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        pending = [iter(sorted(graph[start]))]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                pending.append(iter(sorted(graph[nxt])))
    return None


def test_imgpipe_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk really saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("stage", sorted(STAGE_RULES))
def test_a_stage_imports_nothing_from_the_stages_it_must_not_know(stage: str) -> None:
    graph = import_graph(PACKAGE)
    assert any(_under(m, (stage,)) for m in graph)  # the stage exists under that name
    forbidden, allowed = STAGE_RULES[stage]
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if _under(m, (stage,))
                   for t in targets if _under(t, forbidden) and not _under(t, allowed))
    assert not wrong, f"{stage} reaches where it must not: " + "; ".join(wrong)


def test_a_cycle_through_a_lazy_or_type_checking_import_is_found(tmp_path: Path) -> None:
    """The checker itself: a relative import, one inside a function and one under TYPE_CHECKING."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.sub import c\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.sub.c"},
                     "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import pkg.sub\n")
    assert find_cycle(import_graph(pkg)) is None
