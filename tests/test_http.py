"""HTTP for acquisition: which failures are retried, how long each wait is, and verified downloads."""
from __future__ import annotations

import requests

from acquire.http import RetryPolicy, Retrier, download, transient_delay
from conftest import closed_port


def _recorded_sleeps(monkeypatch) -> list[float]:
    """The Retrier's waits, recorded instead of slept (the test takes no wall-clock time to check them)."""
    import acquire.http

    sleeps: list[float] = []
    monkeypatch.setattr(acquire.http.time, "sleep", sleeps.append)
    return sleeps


def test_5xx_backs_off_and_429_waits_as_told(loopback, monkeypatch):
    statuses = [503, 500, 200]
    server = loopback(handlers={"/flaky": lambda query: (statuses.pop(0), b"ok")})
    sleeps = _recorded_sleeps(monkeypatch)
    retry = Retrier(RetryPolicy(backoff_s=0.5, min_interval_s=0))
    session = requests.Session()

    def get(path):
        response = session.get(server.url + path, timeout=5)
        response.raise_for_status()
        return response.text

    assert retry(lambda: get("/flaky"), "flaky") == "ok"
    assert sleeps == [0.5, 1.0]  # exponential back-off on 5xx
    error = requests.HTTPError(response=_response(429, {"Retry-After": "7"}))
    assert transient_delay(error, 0, RetryPolicy()) == 7.0
    assert transient_delay(requests.HTTPError(response=_response(429, {})), 2, RetryPolicy(backoff_s=1)) == 4.0
    assert transient_delay(requests.HTTPError(response=_response(429, {"Retry-After": "9999"})), 0,
                           RetryPolicy(retry_after_max_s=120)) == 9999.0  # as asked: the Retrier refuses it
    assert transient_delay(requests.HTTPError(response=_response(404, {})), 0, RetryPolicy()) is None


def _response(status: int, headers: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    return response


def test_retry_after_is_honoured_end_to_end(monkeypatch, tmp_path):
    """A real 429 with Retry-After from a local server: the Retrier waits exactly that long, then succeeds."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls = []

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            calls.append(self.path)
            first = len(calls) == 1
            self.send_response(429 if first else 200)
            if first:
                self.send_header("Retry-After", "3")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        sleeps = _recorded_sleeps(monkeypatch)
        target = tmp_path / "file.bin"
        size = download(requests.Session(), f"http://127.0.0.1:{httpd.server_port}/x", target, lambda p: None,
                        Retrier(RetryPolicy(backoff_s=0.25, min_interval_s=0)), timeout_s=5)
        assert size == 2 and target.read_bytes() == b"ok" and len(calls) == 2
        assert sleeps == [3.0]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_refused_connections_are_not_retried(monkeypatch):
    sleeps = _recorded_sleeps(monkeypatch)
    retry = Retrier(RetryPolicy(min_interval_s=0))
    url = f"http://127.0.0.1:{closed_port()}/x"
    try:
        retry(lambda: requests.get(url, timeout=5), "refused")
    except requests.ConnectionError:
        pass
    else:
        raise AssertionError("a refused connection did not raise")
    assert sleeps == []


def test_a_retry_after_over_the_cap_fails_at_once_and_the_last_attempt_sleeps_no_more(monkeypatch):
    from acquire.http import DownloadLimit, RetriesExhausted

    sleeps = _recorded_sleeps(monkeypatch)
    retry = Retrier(RetryPolicy(min_interval_s=0, retry_after_max_s=120, max_attempts=3, backoff_s=1))

    def busy():
        raise requests.HTTPError(response=_response(429, {"Retry-After": "3600"}))

    try:
        retry(busy, "busy")
    except DownloadLimit as error:
        assert "asks to wait 3600 s (Retry-After), over the 120-s cap" in str(error)
    else:
        raise AssertionError("a Retry-After of an hour was waited for")
    assert sleeps == []

    def failing():
        raise requests.HTTPError(response=_response(503, {}))

    try:
        retry(failing, "failing")
    except RetriesExhausted as error:
        assert "3 attempts failed" in str(error)
    assert sleeps == [1.0, 2.0]  # between attempts only: nothing after the third
