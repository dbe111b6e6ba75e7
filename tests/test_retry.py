from __future__ import annotations

import pytest

from imgpipe import retry
from imgpipe.errors import CloudConfigError, GlanceRefusedError, UploadError

FAST = retry.RetryLimits(attempts=3, initial=0.01, maximum=0.02, total=10.0, max_retry_after=0.05)


def test_transient_retried_then_succeeds() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise retry.Transient("HTTP 503", retry_after=0.01)
        return "ok"

    assert retry.call("flaky", flaky, FAST) == "ok" and len(calls) == 3


def test_gives_up_with_the_requested_error() -> None:
    def down() -> None:
        raise retry.Transient("HTTP 503")

    with pytest.raises(UploadError, match="upload x: gave up after 3 attempts: HTTP 503"):
        retry.call("upload x", down, FAST)
    with pytest.raises(CloudConfigError, match="gave up"):
        retry.call("auth", down, FAST, give_up=CloudConfigError)


def test_client_errors_are_not_retried() -> None:
    calls = []

    def refused() -> None:
        calls.append(1)
        raise GlanceRefusedError("HTTP 415")

    with pytest.raises(GlanceRefusedError):
        retry.call("refused", refused, FAST)
    assert calls == [1]


def test_retry_after_is_honoured_and_capped() -> None:
    import tenacity

    wait = retry._wait(retry.RetryLimits(max_retry_after=30.0))
    state = tenacity.RetryCallState(None, None, (), {})
    state.attempt_number = 1
    state.set_exception((retry.Transient, retry.Transient("x", retry_after=7.0), None))
    assert wait(state) == 7.0
    state.set_exception((retry.Transient, retry.Transient("x", retry_after=500.0), None))
    assert wait(state) == 30.0
    assert retry.parse_retry_after("12") == 12.0 and retry.parse_retry_after("soon") is None


def test_command_retries_only_resource_exhaustion() -> None:
    calls = []

    def eagain() -> None:
        calls.append(1)
        raise RuntimeError("qemu_thread_create: Resource temporarily unavailable")

    with pytest.raises(RuntimeError):
        retry.command("qemu-img", eagain, str)
    assert len(calls) == retry.COMMAND_ATTEMPTS
