"""What a cloud's Glance accepts, read from /v2/info/* once per cloud and run, each only when asked.

Clouds differ in ways a user only learns by failing: which import methods are on, which
stores exist (and which is rbd, where only raw clones), quotas, and the vendor hints
openstacksdk carries (image_format, image_api_use_tasks). doctor shows these facts and
upload chooses PUT, import and stores from the same ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from imgpipe import timing
from imgpipe.cloud import glance
from imgpipe.cloud.clouds import Cloud
from imgpipe.errors import GlanceRefusedError

NEEDS_ADMIN = "needs admin"
# Nova's RBD backend copy-on-write clones raw images only; qcow2 is downloaded and converted.
RBD_PROFILE = "kvm-raw"


@dataclass
class Store:
    id: str
    default: bool = False
    type: str | None = None  # from /v2/info/stores/detail, which only admins may read
    description: str = ""


@dataclass
class Facts:
    cloud: str
    import_methods: list[str] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)
    stores_detail: str = "n/a"  # "ok", NEEDS_ADMIN, or "n/a" (single-store Glance)
    usage: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    put_forbidden: bool = False  # learnt when a PUT /file is refused with 403 (Cloud.put_forbidden)

    def rbd_stores(self) -> list[str]:
        return [s.id for s in self.stores if s.type == "rbd"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_methods(cloud: Cloud) -> list[str]:
    """The import methods Glance offers: GET /v2/info/import, once per cloud and run."""

    def read() -> list[str]:
        code, body = _get(cloud, "/v2/info/import")
        return list(body.get("import-methods", {}).get("value", [])) if code == 200 else []

    return cloud.learn("import methods", read)


def stores(cloud: Cloud) -> list[Store]:
    """The stores Glance lists ([] for a single-store Glance): GET /v2/info/stores, once per cloud and run."""

    def read() -> list[Store]:
        code, body = _get(cloud, "/v2/info/stores")
        return [Store(s["id"], str(s.get("default", "")).lower() == "true", description=s.get("description", ""))
                for s in body.get("stores", [])] if code == 200 else []

    return cloud.learn("stores", read)


def facts(cloud: Cloud) -> Facts:
    """Everything doctor shows; store types and quota are read only here, since nothing else uses them."""
    found = Facts(cloud.name, import_methods=import_methods(cloud), hints=dict(cloud.hints),
                  stores=[replace(s) for s in stores(cloud)], put_forbidden=cloud.put_forbidden)
    if found.stores:
        code, detail = _get(cloud, "/v2/info/stores/detail")
        if code == 200:
            found.stores_detail = "ok"
            types = {s["id"]: s.get("type") for s in detail.get("stores", [])}
            for store in found.stores:
                store.type = types.get(store.id)
        elif code == 403:
            found.stores_detail = NEEDS_ADMIN
    code, body = _get(cloud, "/v2/info/usage")
    if code == 200:
        found.usage = dict(body.get("usage", {}))
    return found


def _get(cloud: Cloud, path: str) -> tuple[int, dict[str, Any]]:
    """(status, body); 403/404 are answers here (not exposed, or not allowed), not errors."""
    with timing.span("discovery"):
        resp = cloud.call(f"GET {path}",
                          lambda: glance.request(cloud, "GET", path, f"read {path}", ok=(200, 403, 404)))
    return resp.status_code, (resp.json() if resp.status_code == 200 else {})


def wanted_stores(cloud: Cloud, asked: list[str], all_stores: bool) -> list[str]:
    """The stores an image must end up in ([] = Glance's default), checked against the cloud's."""
    known = [s.id for s in stores(cloud)]
    if all_stores:
        if not known:
            raise GlanceRefusedError(f"cloud {cloud.name}: --all-stores, but Glance lists no stores")
        return known
    unknown = [s for s in asked if s not in known]
    if unknown:
        raise GlanceRefusedError(f"cloud {cloud.name}: no store {', '.join(unknown)} "
                                 f"(stores: {', '.join(known) or 'none listed'})")
    return list(dict.fromkeys(asked))
