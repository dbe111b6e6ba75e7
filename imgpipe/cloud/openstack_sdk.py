"""openstacksdk's config loader without the rest of the SDK, which imgpipe does not use."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def _openstack_package_on_demand() -> None:
    """Make `import openstack.config` load openstack.config, not the whole SDK.

    openstack/__init__ imports openstack.connection and with it every service's proxy (some
    450 modules, 0.4-2 s of each upload's start on a loaded machine) while imgpipe uses only
    the config loader. The package module is registered without running its __init__; the
    first attribute it lacks (openstack.connect, ...) runs that __init__ in place, so any other
    user of the SDK in this process sees the whole package.
    """
    if "openstack" in sys.modules:
        return
    spec = importlib.util.find_spec("openstack")
    if spec is None or spec.loader is None:
        return
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def complete(name: str) -> Any:
        if importlib.util.find_spec(f"openstack.{name}") is not None:  # a submodule: that alone
            return importlib.import_module(f"openstack.{name}")
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    package.__dict__["__getattr__"] = complete
    sys.modules["openstack"] = package


_openstack_package_on_demand()
from openstack import config as os_config  # noqa: E402 - once the package is registered light
from openstack import exceptions as os_exc  # noqa: E402

__all__ = ["os_config", "os_exc"]
