"""`imgpipe doctor`'s cloud checks: what a person checks before blaming the tool, each as a named
result (the tools and profiles are pipeline.doctor's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glanceclient import Client as GlanceClient

from imgpipe import retry
from imgpipe.cloud import clouds, discovery
from imgpipe.cloud.connection import ConnectOptions
from imgpipe.errors import ImgpipeError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)  # the facts behind detail, for --json
    optional: bool = False  # not ok is a warning: only some sources or features need it


def cloud_checks(name: str | None, connect: ConnectOptions) -> list[Check]:
    label = f"cloud {name or 'OS_* environment'}"
    try:
        cloud = connect.connect(name)
    except ImgpipeError as exc:
        return [Check(label, False, str(exc))]
    checks = [Check(label, True, f"authenticated; image endpoint {cloud.endpoint}")]
    client = GlanceClient("2", session=cloud.session, endpoint_override=cloud.endpoint)
    try:
        versions = retry.call(f"{label}: versions", client.versions.list)
        current = [v["id"] for v in versions if v.get("status") == "CURRENT"]
        schema = retry.call(f"{label}: image schema", lambda: client.schemas.get("image")).raw()
    except Exception as exc:  # any failure here is the finding itself
        return [*checks, Check(f"{label} glance", False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)]
    props = schema["properties"]
    disk = [f for f in props["disk_format"]["enum"] if f]
    container = [f for f in props["container_format"]["enum"] if f]
    checks.append(Check(f"{label} glance", True, f"API {', '.join(current) or '?'}; "
                        f"disk formats {', '.join(disk)}; containers {', '.join(container)}"))
    return checks + _discovered(label, cloud) + [_key_manager(label, cloud)]


def _discovered(label: str, cloud: clouds.Cloud) -> list[Check]:
    """Import methods, stores, quota and openstacksdk's hints: what publish will act on."""
    try:
        facts = discovery.facts(cloud)
    except ImgpipeError as exc:
        return [Check(f"{label} import", False, str(exc))]
    data = facts.to_dict()
    checks = [Check(f"{label} import", True, "methods " + (", ".join(facts.import_methods) or
                                                         "none (PUT only)"), data)]
    if facts.stores:
        listed = ", ".join(_store(s) for s in facts.stores)
        detail = f"{listed}; store types: {facts.stores_detail}" if facts.stores_detail != "ok" else listed
        checks.append(Check(f"{label} stores", True, detail))
    else:
        checks.append(Check(f"{label} stores", True, "one store (Glance lists no stores)"))
    for store in facts.rbd_stores():
        checks.append(Check(f"{label} store {store}", True, f"rbd (Ceph): use -p {discovery.RBD_PROFILE}; "
                            "nova clones only raw images copy-on-write and converts every qcow2"))
    if facts.usage:
        checks.append(Check(f"{label} quota", True, "; ".join(
            f"{k} {v.get('usage')}/{v.get('limit')}" if isinstance(v, dict) else f"{k} {v}"
            for k, v in facts.usage.items())))
    if facts.hints:
        checks.append(Check(f"{label} hints", True, "clouds.yaml/vendor profile: " + ", ".join(
            f"{k}={v}" for k, v in facts.hints.items())))
    return checks


def _key_manager(label: str, cloud: clouds.Cloud) -> Check:
    """Signed images need a key manager the user can store certificates in and read them from.

    Not having one is no failure (most images are not signed): ok, with the reason in detail.
    """
    from imgpipe.cloud import keymanager

    try:
        keymanager.endpoint(cloud)
    except ImgpipeError as exc:
        return Check(f"{label} key manager", True, f"none: cannot publish signed images ({exc})",
                     {"key_manager": None, "certificates": False})
    try:
        url = keymanager.probe(cloud)
    except ImgpipeError as exc:
        return Check(f"{label} key manager", False, f"cannot store and read a certificate secret: {exc}",
                     {"key_manager": keymanager.endpoint(cloud), "certificates": False})
    return Check(f"{label} key manager", True, f"{url}: stores and reads certificate secrets (signed images)",
                 {"key_manager": url, "certificates": True})


def _store(store: discovery.Store) -> str:
    notes = ", ".join(n for n in ("default" if store.default else "", store.type or "") if n)
    return f"{store.id} ({notes})" if notes else store.id
