"""Every download ends within its deadline, whatever a server does, and says which limit it hit.

A loopback server misbehaves in each way a catalogue's hosts can (drip-feeding, a chunked body that
never ends, a body over the size cap or longer than its Content-Length, Retry-After: 3600, a redirect
loop, a page instead of an image, a connection reset mid-body, silence after the headers, a status
line sent a byte at a time).
"""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from acquire.http import Downloader, RetryPolicy
from acquire.verify import verify_cover

DEADLINE_S = 3.0
#: Fast back-off, a short deadline and grace: each case ends in seconds.
POLICY = RetryPolicy(timeout_s=2.0, max_attempts=4, backoff_s=0.2, min_interval_s=0.0, deadline_s=DEADLINE_S,
                     rate_grace_s=1.0, min_rate_bytes_s=2048.0, max_bytes=1 << 20)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


class _Faults(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _head(self, status: int = 200, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def _drip(self, data: bytes, every_s: float) -> None:
        for byte in data:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(every_s)

    def do_GET(self) -> None:  # noqa: N802, C901 — one branch per fault
        path = self.path.split("?")[0]
        try:
            if path == "/good.jpg":
                body = _jpeg()
                self._head(Content_Length=str(len(body)), Content_Type="image/jpeg")
                self.wfile.write(body)
            elif path == "/drip.jpg":  # a byte every 0.1 s of a 100-kB body
                self._head(Content_Length="100000")
                self._drip(b"\xff" * 100000, 0.1)
            elif path == "/endless.bin":  # chunked, full speed, never ends
                self._head(Transfer_Encoding="chunked")
                chunk = b"x" * 65536
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            elif path == "/big.bin":
                self._head(Content_Length=str(10 << 20))
                self.wfile.write(b"x" * (2 << 20))
            elif path == "/longer.bin":  # more than its Content-Length, for ever
                self._head(Content_Length="10")
                while True:
                    self.wfile.write(b"y" * 4096)
                    time.sleep(0.01)
            elif path == "/busy.jpg":
                self._head(429, Retry_After="3600", Content_Length="0")
            elif path == "/loop.jpg":
                self._head(302, Location="/loop.jpg", Content_Length="0")
            elif path == "/page.jpg":
                body = b"<html><body>Not found, but 200</body></html>"
                self._head(Content_Length=str(len(body)), Content_Type="text/html")
                self.wfile.write(body)
            elif path == "/reset.jpg":  # half the body, then a reset (RST, not a clean close)
                self._head(Content_Length="20000")
                self.wfile.write(b"z" * 10000)
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.wfile.close()  # the file objects hold the socket open: close them first
                self.rfile.close()
                self.connection.close()
            elif path == "/silent.jpg":  # headers, then nothing until the client goes
                self._head(Content_Length="1000")
                time.sleep(30)
            elif path == "/slow-status.jpg":  # the status line itself a byte at a time
                self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" * 50, 0.2)
            else:
                self._head(404, Content_Length="0")
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client gave up: what the test wants


@pytest.fixture(scope="module")
def faults():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faults)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _accept(path) -> None:
    pass


@pytest.mark.parametrize("path, verify, reason", [
    ("/drip.jpg", _accept, "under the least rate"),
    ("/endless.bin", _accept, "size limit"),
    ("/big.bin", _accept, "size limit"),
    ("/busy.jpg", _accept, "Retry-After"),
    ("/loop.jpg", _accept, "redirects"),
    ("/page.jpg", verify_cover, "not a usable image"),
    ("/reset.jpg", _accept, "attempt"),
    ("/silent.jpg", _accept, "deadline"),
    ("/slow-status.jpg", _accept, "deadline"),
])
def test_each_fault_ends_within_its_deadline_with_its_reason(faults, tmp_path, path, verify, reason):
    downloader = Downloader(tmp_path, POLICY)
    started = time.monotonic()
    result = downloader.fetch_many([(faults + path, "cover", verify)])[(faults + path, "cover")]
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE_S + 1.0, (elapsed, result)
    assert result.startswith("!download failed") and reason in result, result
    assert not list((tmp_path / "cover").glob("*")), "a failed download left a file"
    if path == "/page.jpg":
        assert faults + path in result and ".tmp" not in result  # named by its URL, not its temporary file


def test_the_deadline_holds_without_a_least_rate(faults, tmp_path):
    """A drip-feeding server with no least rate set: the watchdog ends it at the deadline."""
    from dataclasses import replace

    downloader = Downloader(tmp_path, replace(POLICY, min_rate_bytes_s=0.0))
    started = time.monotonic()
    result = downloader.fetch_many([(faults + "/drip.jpg", "cover", _accept)])[(faults + "/drip.jpg", "cover")]
    assert DEADLINE_S - 0.5 < time.monotonic() - started < DEADLINE_S + 1.0
    assert "deadline of 3 s" in result, result


def test_a_body_longer_than_its_length_stops_at_the_length_and_good_files_arrive(faults, tmp_path):
    downloader = Downloader(tmp_path, POLICY)
    started = time.monotonic()
    got = downloader.fetch_many([(faults + "/longer.bin", "audio", _accept), (faults + "/good.jpg", "cover", verify_cover)])
    assert time.monotonic() - started < DEADLINE_S
    assert open(got[(faults + "/longer.bin", "audio")], "rb").read() == b"y" * 10
    assert not got[(faults + "/good.jpg", "cover")].startswith("!")


def test_one_slow_url_never_holds_the_others(faults, tmp_path):
    """Eight URLs, three drip-fed: the five good ones arrive while the slow ones run out their time."""
    downloader = Downloader(tmp_path, POLICY)
    urls = [f"{faults}/good.jpg?{i}" for i in range(5)] + [f"{faults}/drip.jpg?{i}" for i in range(3)]
    started = time.monotonic()
    got = downloader.fetch_many([(url, "cover", verify_cover) for url in urls])
    assert time.monotonic() - started < DEADLINE_S + 1.0
    assert [got[(url, "cover")].startswith("!") for url in urls] == [False] * 5 + [True] * 3


def test_a_scoring_job_with_drip_fed_rows_ends_within_the_deadline(main_job_run, faults, tmp_path):
    """Three drip-fed cover URLs and five good ones: the job ends in the deadline (plus start-up) with the
    five scored and the three listed with their reason."""
    import pandas as pd

    from scoring.jobs import score_table

    _, run_dir = main_job_run
    urls = [f"{faults}/good.jpg?{i}" for i in range(5)] + [f"{faults}/drip.jpg?{i}" for i in range(3)]
    table = tmp_path / "tracks.csv"
    pd.DataFrame({"track_id": [f"t{i}" for i in range(8)], "cover_url": urls}).to_csv(table, index=False)
    started = time.monotonic()
    summary = score_table(table, run_dir / "covers", tmp_path / "scores.csv", download=POLICY, device="cpu",
                          progress=False, download_dir=tmp_path / "downloads")
    assert time.monotonic() - started < DEADLINE_S + 15  # start-up: the model loads in a few seconds
    scores = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)
    assert summary["ok"] == 5 and scores["status"].tolist()[:5] == ["ok"] * 5
    assert scores["status"].iloc[5:].str.contains("under the least rate").all()
