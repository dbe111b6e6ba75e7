"""Submodules loaded without their package's __init__, when that __init__ imports far more
than imgpipe uses and every command would pay for it at start-up.

The package module is created but not run; the first attribute it lacks runs its __init__
after all, so any other user of the package still sees all of it.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def defer_package_init(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attr: str) -> Any:
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            raise AttributeError(attr)  # `from package import submodule`: the import system loads it
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, attr)

    package.__dict__["__getattr__"] = complete
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)
