"""A source's unpacked disk exists complete or not at all, and a failure says why in one line."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from imgpipe.errors import NoSpaceError, UnsafeImageError


@contextlib.contextmanager
def removed_on_failure(dest: Path, src: Path, doing: str, unreadable: str,
                       read_errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """On any exception dest is deleted; a full disk becomes NoSpaceError, a read error
    (read_errors) UnsafeImageError naming src."""
    try:
        yield
    except read_errors as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"{src}: no space left in {dest.parent} to {doing}") from exc
        raise UnsafeImageError(f"{src}: {unreadable}: {exc}") from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
