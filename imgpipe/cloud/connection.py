"""How to reach clouds, as every command that talks to one takes it (--cloud, --insecure,
--os-cacert, --retries, --timeout). Light to import: the clients load when a cloud is reached."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from imgpipe import settings

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

    def labels(self) -> list[str | None]:
        return list(self.clouds) or [None]
