"""The only code that speaks HTTP to Glance (images API v2), through a keystoneauth adapter.

Raw requests rather than glanceclient for image calls: glanceclient drops the status code
of 408/415/429/504 and the Retry-After header, both of which the retry policy needs, and it
uploads chunked without a Content-Length, which is slower than a plain PUT.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from keystoneauth1 import exceptions as ksa_exc

from imgpipe.cloud.clouds import Cloud
from imgpipe.errors import AuthError, GlanceRefusedError
from imgpipe.retry import RETRY_STATUS, Transient, parse_retry_after

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
ACTIVE = "active"
IN_PROGRESS = frozenset({"queued", "saving", "importing", "uploading"})
KILLED = "killed"  # an upload Glance gave up on: never becomes active


class Conflict(GlanceRefusedError):
    """409: e.g. an image with this id exists (or existed)."""


class ServerFailed(Transient):
    """A 5xx Glance gave mid-operation: retrying needs a fresh image, not the same request."""


class Gone(ServerFailed):
    """410 on a PUT of the data: the image changed status under the upload (a concurrent PATCH,
    such as the heartbeat, landed during Glance's queued -> saving step). The image cannot take
    the bytes any more; a fresh one can, so it is retried like a 5xx."""


def request(cloud: Cloud, method: str, path: str, what: str, *, ok: Iterable[int] = (200,),
            explain: dict[int, str] | None = None, gone_retries: bool = False,
            **kwargs: Any) -> requests.Response:
    """One HTTP call; statuses become Transient (retry), AuthError or GlanceRefusedError.

    `explain` replaces Glance's own wording for statuses where it is unhelpful; gone_retries:
    a 410 is Gone (retried with a fresh image), not a refusal.
    """
    try:
        resp: requests.Response = cloud.image.request(path, method, raise_exc=False, **kwargs)
    except ksa_exc.Unauthorized as exc:
        raise AuthError(f"cloud {cloud.name}: Keystone refused the credentials (HTTP 401)") from exc
    except (ksa_exc.ConnectionError, ksa_exc.RetriableConnectionFailure) as exc:
        raise Transient(f"{what}: {exc}") from exc
    code = resp.status_code
    if code in ok:
        return resp
    detail = _detail(resp)
    if code in RETRY_STATUS:
        raise Transient(f"{what}: HTTP {code}", parse_retry_after(resp.headers.get("Retry-After")))
    if code >= 500:
        raise ServerFailed(f"{what}: HTTP {code}: {detail}")
    if code == 410 and gone_retries:
        raise Gone(f"{what}: HTTP 410: {detail}")
    if code == 401:
        raise AuthError(f"cloud {cloud.name}: Glance refused the token (HTTP 401)")
    if explain and code in explain:
        detail = explain[code]
    error = Conflict if code == 409 else GlanceRefusedError
    raise error(f"cloud {cloud.name}: {what}: HTTP {code}: {detail}")


def _detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
        text = body.get("message") or body.get("error", {}).get("message") or str(body)
    except ValueError:
        text = resp.text
    text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())[:300] or resp.reason


def csv_list(value: Any) -> list[str]:
    """Glance's comma-separated image fields (stores, os_glance_importing_to_stores, ...)."""
    return [s for s in str(value or "").split(",") if s]


def create_image(cloud: Cloud, fields: dict[str, Any]) -> dict[str, Any]:
    resp = request(cloud, "POST", "/v2/images", f"create image {fields.get('name')}", ok=(201,),
                   json=fields)
    image: dict[str, Any] = resp.json()
    return image


def get_image(cloud: Cloud, image_id: str) -> dict[str, Any] | None:
    return get_image_at(cloud, image_id)[0]


def get_image_at(cloud: Cloud, image_id: str) -> tuple[dict[str, Any] | None, float]:
    """The image, and Glance's own time when it answered (to compare with its updated_at)."""
    resp = request(cloud, "GET", f"/v2/images/{image_id}", f"get image {image_id}", ok=(200, 404))
    return (None if resp.status_code == 404 else dict(resp.json())), server_time(resp)


def server_time(resp: requests.Response) -> float:
    """The Date header as seconds since the epoch: the server's clock, not this host's (RFC 9110
    makes origin servers send it; without one, the local clock is all there is)."""
    try:
        return parsedate_to_datetime(resp.headers["Date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


def timestamp(value: str | None) -> float:
    """One of Glance's ISO 8601 times (created_at, updated_at) as seconds since the epoch."""
    if not value:
        return 0.0
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def list_images(cloud: Cloud, filters: dict[str, str]) -> list[dict[str, Any]]:
    return list_images_at(cloud, filters)[0]


def list_images_at(cloud: Cloud, filters: dict[str, str]) -> tuple[list[dict[str, Any]], float]:
    """Every image matching the filters (Glance filters on custom properties too), all pages,
    and Glance's time when it answered the last page.

    Glance reads "op:value" in the name filter, so a docker name like repo:tag gets "eq:".
    """
    wanted = dict(filters)
    if ":" in wanted.get("name", ""):
        wanted["name"] = f"eq:{wanted['name']}"
    params: dict[str, str] | None = {"limit": "100", **wanted}
    path = "/v2/images"
    images: list[dict[str, Any]] = []
    while True:
        resp = request(cloud, "GET", path, "list images", params=params)
        body = resp.json()
        images += body.get("images", [])
        next_link = body.get("next")
        if not next_link:
            return images, server_time(resp)
        path, params = next_link, None


def update_properties(cloud: Cloud, image: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    ops = [{"op": "replace" if key in image else "add", "path": f"/{key}", "value": value}
           for key, value in props.items()]
    resp = request(cloud, "PATCH", f"/v2/images/{image['id']}", f"update image {image['id']}",
                   json=ops, headers={"Content-Type": PATCH_TYPE})
    updated: dict[str, Any] = resp.json()
    return updated


def delete_image(cloud: Cloud, image_id: str) -> None:
    request(cloud, "DELETE", f"/v2/images/{image_id}", f"delete image {image_id}", ok=(204, 404))


def image_action(cloud: Cloud, image_id: str, action: str) -> None:
    """deactivate / reactivate."""
    request(cloud, "POST", f"/v2/images/{image_id}/actions/{action}", f"{action} image {image_id}",
            ok=(204,))


def put_data(cloud: Cloud, image_id: str, body: Any, disk_format: str, store: str | None = None,
             forbidden_ok: bool = False) -> bool:
    """PUT the bytes with Content-Length; a 415 means Glance's inspector refused the content.

    Returns False for a 403 when forbidden_ok (a policy that allows import only).
    """
    headers = {"Content-Type": "application/octet-stream"}
    if store:
        headers["X-Image-Meta-Store"] = store
    resp = request(cloud, "PUT", f"/v2/images/{image_id}/file", f"upload image {image_id}",
                   ok=(204, 403) if forbidden_ok else (204,), data=body, headers=headers, gone_retries=True,
                   explain={415: f"Glance says the content is not a valid {disk_format}"})
    return resp.status_code == 204


def stage_data(cloud: Cloud, image_id: str, body: Any) -> None:
    """PUT the bytes into the staging area, for a glance-direct import."""
    request(cloud, "PUT", f"/v2/images/{image_id}/stage", f"stage image {image_id}", ok=(204,),
            data=body, headers={"Content-Type": "application/octet-stream"}, gone_retries=True)
