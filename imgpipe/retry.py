"""Every retry policy in one place, built on tenacity.

keystoneauth's own retries are off (they can resend an already-consumed upload body), so
imgpipe decides here what is worth another try: connection failures, timeouts, and the
HTTP statuses that mean "later" (408/429/502/503/504, honouring Retry-After).
The HTTP libraries load on first use, so qemu-only commands start without them.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from imgpipe import settings
from imgpipe.errors import ImgpipeError, UploadError

LOG = logging.getLogger("imgpipe.retry")
RETRY_STATUS = frozenset({408, 429, 502, 503, 504})
T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying; retry_after is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryLimits:
    attempts: int = settings.RETRY_ATTEMPTS
    initial: float = 0.5
    maximum: float = 20.0
    total: float = 600.0
    max_retry_after: float = 60.0


DEFAULT_LIMITS = RetryLimits()

# qemu-img under load sometimes cannot start a thread (EAGAIN); a moment later it can.
RESOURCE_EXHAUSTED = "Resource temporarily unavailable"
COMMAND_ATTEMPTS = 3


@functools.cache
def transient_types() -> tuple[type[BaseException], ...]:
    import requests
    from glanceclient import exc as glance_exc
    from keystoneauth1 import exceptions as ksa_exc

    return (
        Transient,
        ksa_exc.RetriableConnectionFailure,
        ksa_exc.ConnectionError,
        requests.ConnectionError,
        requests.Timeout,
        glance_exc.CommunicationError,
        glance_exc.HTTPServiceUnavailable,
        glance_exc.HTTPBadGateway,
    )


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, transient_types())


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _wait(limits: RetryLimits) -> Callable[[tenacity.RetryCallState], float]:
    """Exponential backoff with full jitter, unless the server said when to come back."""

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            return float(min(hint, limits.max_retry_after))
        ceiling = min(limits.maximum, limits.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(limits.initial / 2, ceiling)

    return wait


def _log(what: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        LOG.warning("%s: attempt %d failed (%s); retrying in %.1fs", what, state.attempt_number,
                    exc, state.next_action.sleep if state.next_action else 0)

    return before_sleep


def call(what: str, fn: Callable[[], T], limits: RetryLimits = DEFAULT_LIMITS,
         give_up: type[ImgpipeError] = UploadError) -> T:
    """Run fn until it succeeds or fails for good; when the limits run out, raise give_up."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(limits.attempts) | tenacity.stop_after_delay(limits.total),
        wait=_wait(limits),
        before_sleep=_log(what),
        reraise=True,
    )
    try:
        return retrying(fn)
    except transient_types() as exc:
        attempts = retrying.statistics.get("attempt_number", limits.attempts)
        raise give_up(f"{what}: gave up after {attempts} attempts: {exc}") from exc


def command(what: str, fn: Callable[[], T], stderr_of: Callable[[BaseException], str]) -> T:
    """Run a local command again when it failed only for lack of a thread or process."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda exc: RESOURCE_EXHAUSTED in stderr_of(exc)),
        stop=tenacity.stop_after_attempt(COMMAND_ATTEMPTS),
        wait=tenacity.wait_fixed(1.0),
        before_sleep=_log(what),
        reraise=True,
    )
    return retrying(fn)
