"""Clouds the way OpenStack users already describe them: clouds.yaml, OS_CLOUD, OS_* variables.

openstack.config does the loading (and TLS settings: verify, cacert, --insecure); imgpipe
only turns its result into a keystoneauth session with retries off, and its errors into
messages that never contain a secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from keystoneauth1 import adapter
from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import session as ksa_session
from openstack import config as os_config
from openstack import exceptions as os_exc

from imgpipe import retry, settings
from imgpipe.errors import AuthError, CloudConfigError

DEFAULT_TIMEOUT = settings.REQUEST_TIMEOUT


@dataclass
class Cloud:
    name: str
    session: ksa_session.Session
    image: adapter.Adapter
    endpoint: str
    # openstacksdk's per-cloud image hints from clouds.yaml / vendor profiles.
    hints: dict[str, Any] = field(default_factory=dict)


HINT_KEYS = ("image_format", "image_api_use_tasks")


def connect(name: str | None = None, *, insecure: bool = False, cacert: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> Cloud:
    """Authenticate to one cloud and locate its image service."""
    cloud_name = name or os.environ.get("OS_CLOUD") or None
    kwargs: dict[str, object] = {}
    if insecure:
        kwargs["verify"] = False
    if cacert:
        kwargs["cacert"] = cacert
    label = cloud_name or "OS_* environment"
    try:
        region = os_config.OpenStackConfig(load_envvars=True).get_one(cloud=cloud_name, **kwargs)
        session = region.get_session()
    except (os_exc.ConfigException, ksa_exc.MissingRequiredOptions, ksa_exc.NoMatchingPlugin) as exc:
        raise CloudConfigError(f"cloud {label}: {_first_line(exc)}") from exc
    session.timeout = timeout
    endpoint = _image_endpoint(label, region, session)
    image = adapter.Adapter(session, service_type="image", endpoint_override=endpoint,
                            connect_retries=0, status_code_retries=0)
    hints = {k: region.config[k] for k in HINT_KEYS if region.config.get(k) is not None}
    return Cloud(cloud_name or "envvars", session, image, endpoint, hints)


def _image_endpoint(label: str, region: os_config.cloud_region.CloudRegion,
                    session: ksa_session.Session) -> str:
    override = region.get_endpoint("image")
    if override:
        return str(override).rstrip("/")

    def lookup() -> str | None:
        return session.get_endpoint(service_type="image", interface=region.get_interface(),
                                    region_name=region.get_region_name("image"))

    try:
        endpoint = retry.call(f"cloud {label}: authenticate", lookup, give_up=CloudConfigError)
    except ksa_exc.Unauthorized as exc:
        raise AuthError(f"cloud {label}: Keystone refused the credentials (HTTP 401)") from exc
    except ksa_exc.EndpointNotFound as exc:
        raise CloudConfigError(f"cloud {label}: no image service in the catalog") from exc
    except ksa_exc.ClientException as exc:
        raise CloudConfigError(f"cloud {label}: {_first_line(exc)}") from exc
    if not endpoint:
        raise CloudConfigError(f"cloud {label}: no image service in the catalog")
    return str(endpoint).rstrip("/")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
