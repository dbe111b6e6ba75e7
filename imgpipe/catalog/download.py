"""Catalog sources: the expected sha256 of each version, and the verified bytes, downloaded once.

A scheduled job must never publish bytes nobody vouched for, so every source is checked
against its expected sha256 before use. Downloads land in a cache keyed by that hash (so a
source shared by several images or runs is fetched once) and a download cut short resumes
with an HTTP Range request on the next attempt or the next run.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from imgpipe import locks, retry
from imgpipe.catalog.model import Version, is_url
from imgpipe.errors import ChecksumError, LockedError, SourceError
from imgpipe.hashing import CHUNK, sha256_file

TIMEOUT = (10.0, 60.0)  # connect, between bytes
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(.+)$")
_BSD_LINE = re.compile(r"^SHA256\s*\((.+)\)\s*=\s*([0-9a-fA-F]{64})$")


class Checksums:
    """Expected sha256 per version; each checksum file is fetched once per run."""

    def __init__(self, limits: retry.RetryLimits = retry.DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._files: dict[str, str] = {}

    def expected(self, version: Version) -> str:
        if version.sha256:
            return version.sha256
        assert version.checksum_url is not None
        url = version.checksum_url
        if url not in self._files:
            self._files[url] = _read_text(url, self.limits)
        return parse_sums(self._files[url], file_name(version.source), url)


def file_name(location: str) -> str:
    return Path(unquote(urlparse(location).path) if is_url(location) else location).name


def parse_sums(text: str, name: str, where: str) -> str:
    """The sha256 for `name` in a SHA256SUMS file (GNU `hash  name` or BSD `SHA256 (name) = hash`)."""
    for line in text.splitlines():
        line = line.strip()
        gnu, bsd = _SUMS_LINE.match(line), _BSD_LINE.match(line)
        if gnu and Path(gnu.group(2).strip()).name == name:
            return gnu.group(1).lower()
        if bsd and Path(bsd.group(1).strip()).name == name:
            return bsd.group(2).lower()
    raise ChecksumError(f"{where}: no sha256 listed for {name}")


def _read_text(location: str, limits: retry.RetryLimits) -> str:
    if not is_url(location):
        try:
            return Path(location).read_text()
        except OSError as exc:
            raise SourceError(f"{location}: cannot read: {exc.strerror}") from exc

    def get() -> str:
        try:
            resp = requests.get(location, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise retry.Transient(f"{location}: {exc}") from exc
        _check_status(location, resp)
        return resp.text

    return retry.call(f"fetch {location}", get, limits)


def fetch(version: Version, sha256: str, cache_dir: Path,
          limits: retry.RetryLimits = retry.DEFAULT_LIMITS) -> Path:
    """A local file holding exactly the bytes with this sha256, or ChecksumError.

    Local sources are verified in place. URLs go to cache_dir/sources/SHA256/NAME; a lock
    per hash makes concurrent runs (threads, shards on one host) download it only once.
    """
    if not is_url(version.source):
        path = Path(version.source)
        if not path.is_file():
            raise SourceError(f"{path}: no such file")
        _check(str(path), sha256_file(path), sha256)
        return path
    entry = cache_dir / "sources" / sha256
    entry.mkdir(parents=True, exist_ok=True)
    final = entry / (file_name(version.source) or "source")
    with locks.held(entry / ".lock", what=f"download of {version.source}"):
        if final.is_file():
            os.utime(final)  # last use, for prune()
            return final
        part = entry / f".{final.name}.part"
        resumed = retry.call(f"download {version.source}", lambda: _download(version.source, part), limits)
        actual = sha256_file(part)
        if resumed and actual != sha256:
            part.unlink()  # the file at the URL changed under a resumed download: start over once
            retry.call(f"download {version.source}", lambda: _download(version.source, part), limits)
            actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
        _check(version.source, actual, sha256)
        os.replace(part, final)
    return final


def _check(where: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise ChecksumError(f"{where}: sha256 is {actual}, the catalog expects {expected}; not used")


def _download(url: str, part: Path) -> bool:
    """Append the rest of the file to `part`; True if it continued an earlier partial download."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as resp:
            if resp.status_code == 416 and offset:
                return True  # nothing left to fetch; the checksum decides
            _check_status(url, resp)
            resumed = resp.status_code == 206
            if resumed and _range_start(resp) != offset:
                part.unlink()
                raise retry.Transient(f"{url}: server answered a different range; starting over")
            with part.open("ab" if resumed else "wb") as out:
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            return resumed
    except requests.RequestException as exc:
        raise retry.Transient(f"{url}: {exc}") from exc


def _range_start(resp: requests.Response) -> int:
    match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else -1


def _check_status(url: str, resp: requests.Response) -> None:
    code = resp.status_code
    if code in retry.RETRY_STATUS or code >= 500:
        raise retry.Transient(f"{url}: HTTP {code}", retry.parse_retry_after(resp.headers.get("Retry-After")))
    if code not in (200, 206):
        raise SourceError(f"{url}: HTTP {code} {resp.reason}")


def prune(cache_dir: Path, keep: set[str], unused_for: float) -> list[Path]:
    """Delete cached sources no catalog version uses and nobody touched for `unused_for` seconds.

    The age rule protects other catalogs sharing the cache; a source being downloaded right
    now holds its lock and is skipped.
    """
    removed: list[Path] = []
    root = cache_dir / "sources"
    if not root.is_dir():
        return removed
    cutoff = time.time() - unused_for
    for entry in sorted(root.iterdir()):
        if entry.name in keep or not entry.is_dir():
            continue
        files = [f for f in entry.iterdir() if f.name != ".lock"]
        if not files or any(f.stat().st_mtime > cutoff for f in files):
            continue
        try:
            with locks.held(entry / ".lock", wait=False, what=f"cached source {entry.name}"):
                for f in files:
                    f.unlink(missing_ok=True)  # the lock file stays: removing it would race a new locker
        except LockedError:
            continue
        removed.append(entry)
    return removed
