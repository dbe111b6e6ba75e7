"""Clouds the way OpenStack users already describe them: clouds.yaml, OS_CLOUD, OS_* variables.

openstack.config does the loading (and TLS settings: verify, cacert, --insecure); imgpipe
only turns its result into a keystoneauth session with retries off, and its errors into
messages that never contain a secret. A Cloud is the client every Glance call goes through:
it carries the retry limits, labels retried calls with the cloud's name, and holds what a
run learns about the cloud, so nothing about a cloud lives in a module global.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from keystoneauth1 import adapter
from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import session as ksa_session
from openstack import config as os_config
from openstack import exceptions as os_exc

from imgpipe import retry, settings
from imgpipe.errors import AuthError, CloudConfigError, ImgpipeError, UploadError
from imgpipe.metadata_paths import NAMES as METADATA_PATHS

DEFAULT_TIMEOUT = settings.REQUEST_TIMEOUT
T = TypeVar("T")


@dataclass
class Cloud:
    name: str
    session: ksa_session.Session
    image: adapter.Adapter
    endpoint: str
    # openstacksdk's per-cloud image hints from clouds.yaml / vendor profiles.
    hints: dict[str, Any] = field(default_factory=dict)
    limits: retry.RetryLimits = retry.DEFAULT_LIMITS
    # How this cloud hands a guest its metadata, as its clouds.yaml entry declares it
    # (`imgpipe: {metadata: [config-drive, metadata-service]}`); None: not declared.
    metadata_paths: frozenset[str] | None = None
    # Learnt when a PUT /file is refused with 403: the rest of the run imports instead.
    put_forbidden: bool = False
    _learnt: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Images this run created and has neither finished nor deleted: id -> (name, upload run).
    # An interrupted run deletes them at once; the end of each upload retries its own.
    _unfinished: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    def created(self, image_id: str, name: str, run_id: str) -> None:
        with self._lock:
            self._unfinished[image_id] = (name, run_id)

    def settled(self, image_id: str) -> None:
        """The image is finished (active and verified) or gone."""
        with self._lock:
            self._unfinished.pop(image_id, None)

    def unfinished(self, run_id: str | None = None) -> dict[str, str]:
        """id -> name of the unfinished images (of one upload run, or all)."""
        with self._lock:
            return {i: name for i, (name, run) in self._unfinished.items() if run_id in (None, run)}

    def call(self, what: str, fn: Callable[[], T], give_up: type[ImgpipeError] = UploadError) -> T:
        """fn retried within this cloud's limits; log lines and errors say "cloud NAME: what"."""
        return retry.call(f"cloud {self.name}: {what}", fn, self.limits, give_up)

    def learn(self, fact: str, read: Callable[[], T]) -> T:
        """A fact about the cloud, read once per run by whichever thread asks first and shared.

        A read that failed (after its retries) is not repeated either: every later asker gets
        the same error at once, instead of one more round of retries per image.
        """
        with self._lock:
            if fact not in self._learnt:
                try:
                    self._learnt[fact] = read()
                except ImgpipeError as exc:
                    self._learnt[fact] = exc
            known = self._learnt[fact]
        if isinstance(known, ImgpipeError):
            raise known
        value: T = known
        return value


HINT_KEYS = ("image_format", "image_api_use_tasks")
IMGPIPE_KEY = "imgpipe"  # imgpipe's own settings in a cloud's clouds.yaml entry


def connect(name: str | None = None, *, insecure: bool = False, cacert: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, limits: retry.RetryLimits = retry.DEFAULT_LIMITS) -> Cloud:
    """Authenticate to one cloud and locate its image service."""
    cloud_name = name or os.environ.get("OS_CLOUD") or None
    kwargs: dict[str, Any] = {}
    if insecure:
        kwargs["verify"] = False
    if cacert:
        kwargs["cacert"] = cacert
    label = cloud_name or "OS_* environment"
    try:
        loader = os_config.OpenStackConfig(load_envvars=True)
        region = loader.get_one(cloud=cloud_name, **kwargs)
        where = f"cloud {label}: {loader.config_filename or 'clouds.yaml'}"
        declared = metadata_paths(region.config.get(IMGPIPE_KEY), where)
        session = region.get_session()
    except (os_exc.ConfigException, ksa_exc.MissingRequiredOptions, ksa_exc.NoMatchingPlugin) as exc:
        raise CloudConfigError(f"cloud {label}: {_first_line(exc)}") from exc
    session.timeout = timeout
    endpoint = _image_endpoint(label, region, session)
    image = adapter.Adapter(session, service_type="image", endpoint_override=endpoint,
                            connect_retries=0, status_code_retries=0)
    hints = {k: region.config[k] for k in HINT_KEYS if region.config.get(k) is not None}
    return Cloud(cloud_name or "envvars", session, image, endpoint, hints, limits, metadata_paths=declared)


def metadata_paths(section: Any, where: str) -> frozenset[str] | None:
    """The cloud's `imgpipe:` section in clouds.yaml: `metadata` lists the paths it offers."""
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - {"metadata"}:
        raise CloudConfigError(f"{where}: {IMGPIPE_KEY} must be a mapping with the key metadata")
    listed = section.get("metadata")
    if not isinstance(listed, list) or not listed or not all(p in METADATA_PATHS for p in listed):
        raise CloudConfigError(f"{where}: {IMGPIPE_KEY}.metadata must list one or more of "
                               f"{', '.join(METADATA_PATHS)}, not {listed!r}")
    return frozenset(listed)


def _image_endpoint(label: str, region: os_config.cloud_region.CloudRegion,
                    session: ksa_session.Session) -> str:
    """The image endpoint; the token is fetched here either way, so that connecting (which
    the CLI does on a thread while it reads the file) is the whole of authentication."""
    override = region.get_endpoint("image")
    if override:
        _keystone(label, lambda: session.get_auth_headers())
        return str(override).rstrip("/")
    endpoint = _keystone(label, lambda: session.get_endpoint(
        service_type="image", interface=region.get_interface(), region_name=region.get_region_name("image")))
    if not endpoint:
        raise CloudConfigError(f"cloud {label}: no image service in the catalog")
    return str(endpoint).rstrip("/")


def _keystone(label: str, fn: Callable[[], T]) -> T:
    """One call that may authenticate, retried, its failures in words."""
    try:
        return retry.call(f"cloud {label}: authenticate", fn, give_up=CloudConfigError)
    except ksa_exc.Unauthorized as exc:
        raise AuthError(f"cloud {label}: Keystone refused the credentials (HTTP 401)") from exc
    except ksa_exc.EndpointNotFound as exc:
        raise CloudConfigError(f"cloud {label}: no image service in the catalog") from exc
    except ksa_exc.ClientException as exc:
        raise CloudConfigError(f"cloud {label}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
