"""How to reach clouds, as every command that talks to one takes it (--cloud, --insecure,
--os-cacert, --retries, --timeout). Light to import: the clients load when a cloud is reached."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from imgpipe import settings, timing

if TYPE_CHECKING:
    from imgpipe.cloud.clouds import Cloud
    from imgpipe.retry import RetryLimits


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectOptions:
    clouds: tuple[str, ...] = ()  # names in clouds.yaml; none: $OS_CLOUD or the OS_* variables
    insecure: bool = False
    cacert: str | None = None
    retries: int = settings.RETRY_ATTEMPTS  # attempts per request or upload
    timeout: float = settings.REQUEST_TIMEOUT  # seconds without progress before a request is retried

    def limits(self) -> RetryLimits:
        from imgpipe import retry

        return dataclasses.replace(retry.DEFAULT_LIMITS, attempts=self.retries)

    def connect(self, name: str | None = None) -> Cloud:
        from imgpipe.cloud import clouds

        return clouds.connect(name, insecure=self.insecure, cacert=self.cacert, timeout=self.timeout,
                              limits=self.limits())

    def connect_all(self) -> list[Cloud]:
        """Every cloud asked for, in order (one connection from the environment when none was named)."""
        return [self.connect(name) for name in self.clouds or (None,)]

    def connect_soon(self) -> Callable[[], list[Cloud]]:
        """connect_all started on a thread (the client imports, clouds.yaml, the token); the
        returned call waits for its clouds or raises its error. The CLI reads the file meanwhile.

        A daemon thread: a run that fails on its file first does not wait for Keystone to answer.
        """
        done: list[list[Cloud]] = []
        failed: list[BaseException] = []

        def connect() -> None:
            try:
                with timing.span("auth"):
                    done.append(self.connect_all())
            except BaseException as exc:  # handed to the caller
                failed.append(exc)

        thread = threading.Thread(target=connect, name="connect", daemon=True)
        thread.start()

        def wait() -> list[Cloud]:
            thread.join()
            if failed:
                raise failed[0]
            return done[0]

        return wait

    def labels(self) -> list[str | None]:
        return list(self.clouds) or [None]
