"""HTTP for acquisition: retries that tell transient failures from final ones, and verified downloads.

Retried, with exponential back-off: HTTP 429 (waiting for ``Retry-After``), 5xx, time-outs,
dropped connections and truncated or unparsable bodies. Not retried: refused connections and
unknown hosts (nothing is listening: asking six times only costs minutes), 4xx other than 429,
wrong credentials, and a ``Retry-After`` longer than the policy's cap (the URL fails at once, with
the wait it asked for, instead of holding its batch for an hour). Every file is written under a
temporary name, checked to decode and only then renamed into place (:func:`download`), so a
download is either whole and usable or absent.

A download has a deadline (``RetryPolicy.deadline_s``, every attempt and wait included) and a
least transfer rate, enforced whatever the server does: a watchdog shuts the download's sockets
when the deadline passes, so a server that drip-feeds its body, sends more than its
``Content-Length`` or a chunked body that never ends cannot hold a job past it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions

from engine.io import atomic_path

log = logging.getLogger(__name__)
T = TypeVar("T")


class Unavailable(Exception):
    """The thing asked for does not exist at the source (unknown id, 404): do not ask again."""


class RetriesExhausted(Exception):
    """A request kept failing in a transient way (429, 5xx, time-out, truncated body)."""


class TruncatedResponse(Exception):
    """A body ended before its Content-Length, or an API answered with nothing parsable."""


class DownloadLimit(Exception):
    """A download broke one of its limits (deadline, least rate, size, a Retry-After past the cap): not retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """Time-outs, retries and spacing of requests."""

    timeout_s: float = 10.0
    max_attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    #: A longer Retry-After fails the request at once (with the wait it asked for) rather than waiting.
    retry_after_max_s: float = 120.0
    #: Least time between two requests through one :class:`Retrier`.
    min_interval_s: float = 0.1
    #: Wall-clock limit of one download, every attempt and wait included (a 30-s preview is ~0.5 MB).
    deadline_s: float = 60.0
    #: Largest body kept (bytes); ``None``: no limit. A 30-s preview is ~0.5 MB, a cover ~0.1 MB.
    max_bytes: int | None = 64 << 20
    #: A download slower than this (bytes/s, averaged from its start) after ``rate_grace_s`` is given up.
    min_rate_bytes_s: float = 2048.0
    rate_grace_s: float = 10.0


def download_policy(settings: Mapping[str, Any] | None) -> RetryPolicy:
    """A :class:`RetryPolicy` from a config's ``download`` section (its keys are the policy's fields)."""
    known = {f.name for f in dataclasses.fields(RetryPolicy)}
    settings = dict(settings or {})
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"download: unknown setting(s) {unknown}; known: {sorted(known)}")
    policy = RetryPolicy(**settings)
    if policy.deadline_s <= 0 or policy.timeout_s <= 0:
        raise ValueError(f"download.deadline_s and download.timeout_s must be > 0, got {policy.deadline_s} "
                         f"and {policy.timeout_s}")
    return policy


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

    def __call__(self, call: Callable[[], T], what: str, deadline: float | None = None) -> T:
        """``call()``, retried as the policy says; ``deadline`` (a ``time.monotonic()`` value): no wait runs
        past it, and a failure that would need one is final."""
        policy = self.policy
        last_error = ""
        for attempt in range(policy.max_attempts):
            self._space()
            try:
                return call()
            except (Unavailable, DownloadLimit):
                raise
            except Exception as error:  # noqa: BLE001 — classified just below; final kinds re-raise
                delay = transient_delay(error, attempt, policy)
                if delay is None:
                    raise
                last_error = f"{type(error).__name__}: {str(error)[:200]}"
                if retry_after_seconds(error) is not None and delay > policy.retry_after_max_s:
                    raise DownloadLimit(f"{what}: the server asks to wait {delay:g} s (Retry-After), over the "
                                        f"{policy.retry_after_max_s:g}-s cap; not retried") from error
                if attempt + 1 == policy.max_attempts:
                    break  # no wait after the last attempt
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise DownloadLimit(f"{what}: deadline of {policy.deadline_s:g} s reached after {attempt + 1} "
                                        f"attempt(s); last: {last_error}") from error
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


def _status_and_headers(error: BaseException) -> tuple[int | None, Mapping[str, str]]:
    """The HTTP status and headers an API client's or requests' error carries (``None, {}`` if none)."""
    import httpx
    from deezer.exceptions import DeezerHTTPError
    from spotipy.exceptions import SpotifyException

    if isinstance(error, SpotifyException):
        return error.http_status, error.headers or {}
    if isinstance(error, DeezerHTTPError) and isinstance(error.__cause__, httpx.HTTPStatusError):
        return error.__cause__.response.status_code, error.__cause__.response.headers
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code, error.response.headers
    return None, {}


def retry_after_seconds(error: BaseException) -> float | None:
    """The wait (s) a 429 answer's ``Retry-After`` asks for; ``None`` when ``error`` is no 429 or says no number."""
    status, headers = _status_and_headers(error)
    if status != 429:
        return None
    try:
        return max(float(headers.get("Retry-After") or headers.get("retry-after")), 0.0)
    except (TypeError, ValueError):
        return None


def transient_delay(error: Exception, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before retrying ``error``, or ``None`` when retrying cannot help.

    A 429's ``Retry-After`` is returned as asked (the :class:`Retrier` refuses one over the cap)."""
    import httpx
    from deezer.exceptions import DeezerErrorResponse
    from spotipy.oauth2 import SpotifyOauthError

    backoff = min(policy.backoff_max_s, policy.backoff_s * 2 ** attempt)
    status, _ = _status_and_headers(error)
    if status is None:
        if isinstance(error, SpotifyOauthError) and getattr(error, "error", None) in ("invalid_client",
                                                                                      "unauthorized_client"):
            return None  # wrong credentials: asking again will not help
        if isinstance(error, DeezerErrorResponse):
            code = (error.json_data.get("error") or {}).get("code")
            return backoff if code == 4 else None  # 4: Deezer's "quota exceeded"
        if cannot_connect(error):
            return None  # refused or unknown host: nothing is listening there
        if isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                              requests.exceptions.InvalidJSONError, httpx.TransportError, json.JSONDecodeError,
                              TruncatedResponse, SpotifyOauthError)):
            return backoff
        return None
    if status == 429:
        asked = retry_after_seconds(error)
        return asked if asked is not None else backoff
    return backoff if status >= 500 else None


class NotUsable(Exception):
    """A download arrived whole but is not the file it should be (an HTML page served as an image, …)."""


#: The watchdog of the download running in this thread (sockets opened or reused for it are handed to it).
_current_download = threading.local()


def _watch(sock: socket.socket | None) -> None:
    watchdog = getattr(_current_download, "watchdog", None)
    if watchdog is not None and sock is not None:
        watchdog.watch(sock)


class _WatchedConnection:
    """A urllib3 connection that hands each socket it opens to the running download's watchdog."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _WatchedPool:
    """A urllib3 pool whose kept-alive connections (their sockets exist already) are watched when reused."""

    def _get_conn(self, timeout: float | None = None):
        conn = super()._get_conn(timeout)
        _watch(conn.sock)
        return conn


class _WatchedHTTPPool(_WatchedPool, urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(_WatchedPool, urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections hand their sockets to the running download's watchdog."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _Watchdog:
    """Shuts down every socket handed to it once ``deadline`` (``time.monotonic()``) passes: a read blocked on
    a server that sends nothing, or a byte at a time, then returns at once."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


def watched(session: requests.Session) -> requests.Session:
    """``session`` with the adapter that lets :func:`download` enforce its deadline (mounted once)."""
    if not isinstance(session.get_adapter("http://"), _WatchedAdapter):
        adapter = _WatchedAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


def download(session: requests.Session, url: str, target: Path, verify: Callable[[Path], None],
             retry: Retrier, timeout_s: float, max_bytes: int | None = None) -> int:
    """Fetch ``url`` into ``target`` atomically (temporary name, check, rename); returns bytes written.

    ``verify(path)`` must raise when the file does not decode (:class:`NotUsable`, naming the URL);
    404/410 are :class:`Unavailable`. The limits of ``retry.policy`` hold whatever the server does
    (:class:`DownloadLimit`, saying which): ``deadline_s`` for the whole download, every attempt and
    wait included; ``min_rate_bytes_s`` after ``rate_grace_s``; ``max_bytes`` (else the policy's),
    checked while the body streams, nothing over it kept.
    """
    policy = retry.policy
    max_bytes = max_bytes if max_bytes is not None else policy.max_bytes
    deadline = time.monotonic() + policy.deadline_s
    watched(session)

    def fetch(temporary: Path) -> int:
        started = time.monotonic()
        connect = max(0.01, min(timeout_s, deadline - started))
        with session.get(url, timeout=(connect, timeout_s), stream=True) as response:
            if response.status_code in (404, 410):
                raise Unavailable(f"{url}: HTTP {response.status_code}")
            response.raise_for_status()
            expected = response.headers.get("Content-Length")
            if max_bytes is not None and expected is not None and int(expected) > max_bytes:
                raise DownloadLimit(f"{url}: {int(expected)} bytes, over the {max_bytes}-byte size limit")
            written = 0
            with temporary.open("wb") as handle:
                # read1: whatever arrived, at once (a full-size read would wait for 64 KiB of a drip-fed body).
                while chunk := _read_some(response):
                    handle.write(chunk)
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise DownloadLimit(f"{url}: more than the {max_bytes}-byte size limit")
                    elapsed = time.monotonic() - started
                    if elapsed > policy.rate_grace_s and written / elapsed < policy.min_rate_bytes_s:
                        raise DownloadLimit(f"{url}: {written / elapsed:.0f} bytes/s after {elapsed:.0f} s, under the "
                                            f"least rate of {policy.min_rate_bytes_s:g} bytes/s")
        if expected is not None and written != int(expected):
            raise TruncatedResponse(f"{written} of {expected} bytes")
        return written

    def attempt(temporary: Path) -> int:
        _current_download.watchdog = watchdog
        try:
            size = fetch(temporary)
        except (Unavailable, DownloadLimit):
            raise
        except Exception as error:
            if watchdog.fired:
                raise DownloadLimit(f"{url}: deadline of {policy.deadline_s:g} s reached") from error
            raise
        finally:
            _current_download.watchdog = None
        if watchdog.fired:  # cut short, yet parsable (a status line cut after "200"): not the server's answer
            raise DownloadLimit(f"{url}: deadline of {policy.deadline_s:g} s reached")
        return size

    watchdog = _Watchdog(deadline)
    try:
        with atomic_path(target) as temporary:
            size = retry(lambda: attempt(temporary), f"download {url}", deadline=deadline)
            try:
                verify(temporary)
            except Exception as error:  # noqa: BLE001 — what verify raises says why; the URL says which
                raise NotUsable(f"{url}: {str(error).replace(temporary.name, Path(url.split('?')[0]).name)}") from None
    finally:
        watchdog.cancel()
    return size


def _read_some(response: requests.Response) -> bytes:
    """The next part of a streamed body (b"" at its end), urllib3's errors as requests' (which the Retrier knows)."""
    try:
        return response.raw.read1(1 << 16, decode_content=True)
    except urllib3.exceptions.ReadTimeoutError as error:
        raise requests.exceptions.ConnectionError(error) from error
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.IncompleteRead, OSError) as error:
        raise requests.exceptions.ChunkedEncodingError(error) from error
    except urllib3.exceptions.DecodeError as error:
        raise requests.exceptions.ContentDecodingError(error) from error


class Downloader:
    """Fetches URLs into ``folder`` once each (named by the URL's digest), verified, several at a time.

    A URL already downloaded is not asked for again, in this run or the next (the file is the
    record); one that failed is asked again next time. ``max_parallel`` bounds the connections.
    """

    def __init__(self, folder: str | Path, policy: RetryPolicy | None = None, max_parallel: int = 8,
                 max_bytes: int | None = None) -> None:
        self.folder, self.policy = Path(folder), policy or RetryPolicy()
        self.max_parallel, self.max_bytes = max_parallel, max_bytes  # None: the policy's limit
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
