"""HTTP for acquisition: retries that tell transient failures from final ones, and verified downloads.

Retried, with exponential back-off: HTTP 429 (waiting for ``Retry-After``, capped), 5xx, time-outs,
dropped connections and truncated or unparsable bodies. Not retried: refused connections and
unknown hosts (nothing is listening: asking six times only costs minutes), 4xx other than 429,
and wrong credentials. Every file is written under a temporary name, checked to decode and only
then renamed into place (:func:`download`), so a download is either whole and usable or absent.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests

from engine.io import atomic_path

log = logging.getLogger(__name__)
T = TypeVar("T")


class Unavailable(Exception):
    """The thing asked for does not exist at the source (unknown id, 404): do not ask again."""


class RetriesExhausted(Exception):
    """A request kept failing in a transient way (429, 5xx, time-out, truncated body)."""


class TruncatedResponse(Exception):
    """A body ended before its Content-Length, or an API answered with nothing parsable."""


@dataclass(frozen=True)
class RetryPolicy:
    """Time-outs, retries and spacing of requests."""

    timeout_s: float = 10.0
    max_attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    #: A longer Retry-After is cut to this; the wait still uses up one of ``max_attempts``.
    retry_after_max_s: float = 120.0
    #: Least time between two requests through one :class:`Retrier`.
    min_interval_s: float = 0.1


class Retrier:
    """Runs a call, retrying transient failures; also spaces calls ``min_interval_s`` apart (thread-safe)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy, self._last, self._lock = policy, 0.0, threading.Lock()

    def _space(self) -> None:
        with self._lock:
            wait = self.policy.min_interval_s - (time.monotonic() - self._last)
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()

    def __call__(self, call: Callable[[], T], what: str) -> T:
        policy = self.policy
        last_error = ""
        for attempt in range(policy.max_attempts):
            self._space()
            try:
                return call()
            except Unavailable:
                raise
            except Exception as error:  # noqa: BLE001 — classified just below; final kinds re-raise
                delay = transient_delay(error, attempt, policy)
                if delay is None:
                    raise
                last_error = f"{type(error).__name__}: {str(error)[:200]}"
                log.info("%s: attempt %d failed (%s); retrying in %.1fs", what, attempt + 1, last_error, delay)
                time.sleep(delay)
        raise RetriesExhausted(f"{what}: {policy.max_attempts} attempts failed; last: {last_error}")


def cannot_connect(error: BaseException) -> bool:
    """Whether ``error`` says nothing answers at that address: connection refused or unknown host.

    Walks the chain requests/urllib3/httpx wrap such errors in; a time-out or a connection dropped
    mid-answer is not this (those are worth retrying).
    """
    import httpx
    from urllib3.exceptions import NewConnectionError

    if isinstance(error, httpx.ConnectError):
        return True
    seen: set[int] = set()
    stack: list[object] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (NewConnectionError, ConnectionRefusedError, socket.gaierror)):
            return True
        if isinstance(current, BaseException):
            stack += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
    return False


def transient_delay(error: Exception, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before retrying ``error``, or ``None`` when retrying cannot help."""
    import httpx
    from deezer.exceptions import DeezerErrorResponse, DeezerHTTPError
    from spotipy.exceptions import SpotifyException
    from spotipy.oauth2 import SpotifyOauthError

    backoff = min(policy.backoff_max_s, policy.backoff_s * 2 ** attempt)
    status, headers = None, {}
    if isinstance(error, SpotifyException):
        status, headers = error.http_status, error.headers or {}
    elif isinstance(error, DeezerHTTPError) and isinstance(error.__cause__, httpx.HTTPStatusError):
        status, headers = error.__cause__.response.status_code, error.__cause__.response.headers
    elif isinstance(error, requests.HTTPError) and error.response is not None:
        status, headers = error.response.status_code, error.response.headers
    elif isinstance(error, SpotifyOauthError) and getattr(error, "error", None) in ("invalid_client", "unauthorized_client"):
        return None  # wrong credentials: asking again will not help
    elif isinstance(error, DeezerErrorResponse):
        code = (error.json_data.get("error") or {}).get("code")
        return backoff if code == 4 else None  # 4: Deezer's "quota exceeded"
    elif cannot_connect(error):
        return None  # refused or unknown host: nothing is listening there
    elif isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.InvalidJSONError, httpx.TransportError, json.JSONDecodeError,
                            TruncatedResponse, SpotifyOauthError)):
        return backoff
    if status == 429:
        retry_after = headers.get("Retry-After") or headers.get("retry-after")
        try:
            return min(max(float(retry_after), 0.0), policy.retry_after_max_s)
        except (TypeError, ValueError):
            return backoff
    if status is not None and status >= 500:
        return backoff
    return None


def download(session: requests.Session, url: str, target: Path, verify: Callable[[Path], None],
             retry: Retrier, timeout_s: float, max_bytes: int | None = None) -> int:
    """Fetch ``url`` into ``target`` atomically (temporary name, check, rename); returns bytes written.

    ``verify(path)`` must raise when the file does not decode; 404/410 are :class:`Unavailable`.
    A body larger than ``max_bytes`` is refused (:class:`ValueError`) without being kept.
    """
    def fetch(temporary: Path) -> int:
        with session.get(url, timeout=timeout_s, stream=True) as response:
            if response.status_code in (404, 410):
                raise Unavailable(f"{url}: HTTP {response.status_code}")
            response.raise_for_status()
            expected = response.headers.get("Content-Length")
            if max_bytes is not None and expected is not None and int(expected) > max_bytes:
                raise ValueError(f"{url}: {int(expected)} bytes, over the {max_bytes}-byte limit")
            written = 0
            with temporary.open("wb") as handle:
                for chunk in response.iter_content(1 << 16):
                    handle.write(chunk)
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise ValueError(f"{url}: more than the {max_bytes}-byte limit")
        if expected is not None and written != int(expected):
            raise TruncatedResponse(f"{written} of {expected} bytes")
        return written

    with atomic_path(target) as temporary:
        size = retry(lambda: fetch(temporary), f"download {url}")
        verify(temporary)
    return size


class Downloader:
    """Fetches URLs into ``folder`` once each (named by the URL's digest), verified, several at a time.

    A URL already downloaded is not asked for again, in this run or the next (the file is the
    record); one that failed is asked again next time. ``max_parallel`` bounds the connections.
    """

    def __init__(self, folder: str | Path, policy: RetryPolicy | None = None, max_parallel: int = 8,
                 max_bytes: int | None = None) -> None:
        self.folder, self.policy = Path(folder), policy or RetryPolicy()
        self.max_parallel, self.max_bytes = max_parallel, max_bytes
        self.retry = Retrier(self.policy)
        self._local = threading.local()

    def target(self, url: str, kind: str) -> Path:
        suffix = Path(url.split("?")[0]).suffix.lower()[:5] or ".bin"
        return self.folder / kind / (hashlib.sha1(url.encode()).hexdigest() + suffix)

    def fetch(self, url: str, kind: str, verify: Callable[[Path], None]) -> Path:
        """The local file of ``url`` (downloaded and verified now, or earlier); raises on failure."""
        target = self.target(url, kind)
        if not target.is_file():
            session = getattr(self._local, "session", None) or requests.Session()
            self._local.session = session
            download(session, url, target, verify, self.retry, self.policy.timeout_s, self.max_bytes)
        return target

    def fetch_many(self, requests_: Iterable[tuple[str, str, Callable[[Path], None]]]) -> dict[tuple[str, str], str]:
        """``{(url, kind): local path or "!<reason>"}`` for ``(url, kind, verify)`` requests, fetched in parallel."""
        unique = list(dict.fromkeys((url, kind, verify) for url, kind, verify in requests_))

        def one(request: tuple[str, str, Callable[[Path], None]]) -> str:
            url, kind, verify = request
            try:
                return str(self.fetch(url, kind, verify))
            except Exception as error:  # noqa: BLE001 — recorded for its row, never stops the others
                return f"!download failed: {type(error).__name__}: {str(error)[:200]}"

        if len(unique) <= 1 or self.max_parallel <= 1:
            results = [one(r) for r in unique]
        else:
            with ThreadPoolExecutor(min(self.max_parallel, len(unique))) as pool:
                results = list(pool.map(one, unique))
        return {(url, kind): result for (url, kind, _), result in zip(unique, results)}
