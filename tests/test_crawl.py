"""The crawler against a local server shaped like Spotify's, Deezer's and MusicBrainz's APIs, with injected faults.

spotipy and deezer-python are pointed at 127.0.0.1 (not mocked): the server answers the token
call, /v1/albums, /v1/tracks, Deezer's /search, MusicBrainz's /ws/2/url and /ws/2/release and the
Cover Art Archive's front-cover redirects, serves covers and previews, and injects 429s
with Retry-After, 5xx, slow answers, truncated bodies and a quota error. The first crawl is
killed mid-way; the second must finish every reachable item without fetching a finished one again.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID, CLIENT_SECRET = "test-client-id", "s3cr3t-never-logged"
ALBUMS = [f"album{i:02d}".ljust(22, "x") for i in range(1, 9)]
TRACKS = [f"track{i:02d}".ljust(22, "y") for i in range(1, 9)]
UNKNOWN_ALBUM, CORRUPT_COVER, NO_PREVIEW, SPOTIFY_PREVIEW = ALBUMS[6], ALBUMS[7], TRACKS[5], TRACKS[0]
#: MusicBrainz releases linked to Spotify albums; the third has no front cover in the Cover Art Archive.
RELEASES = {ALBUMS[0]: "0000aaaa-0000-4000-8000-000000000001", ALBUMS[1]: "0000aaaa-0000-4000-8000-000000000002",
            ALBUMS[2]: "0000aaaa-0000-4000-8000-000000000003"}
NO_FRONT_COVER = RELEASES[ALBUMS[2]]
USER_AGENT = "genrefusion-tests/1.0 ( tests@example.org )"


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _mp3(freq: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * freq * np.arange(22050) / 22050).astype(np.float32), 22050, format="MP3")
    return buffer.getvalue()


class FakeMusicApi(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    files: dict[str, bytes] = {}
    faults: dict[str, list[str]] = {}
    requests: Counter = Counter()
    musicbrainz_times: list[float] = []
    #: The first request for this path waits until ``gate`` is set (the crawl cannot finish before the kill).
    gate_path = f"/preview/{TRACKS[-1]}.mp3"
    gate = threading.Event()
    gate_reached = threading.Event()
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _fault(self, key: str) -> bool:
        """Apply the next injected fault for ``key``; True when the request was answered by it."""
        with self.lock:
            pending = self.faults.get(key, [])
            fault = pending.pop(0) if pending else None
        if fault == "429":
            self._send(429, b'{"error": {"status": 429, "message": "rate limited"}}', headers={"Retry-After": "1"})
        elif fault in ("500", "503"):
            self._send(int(fault), b'{"error": {"status": 500, "message": "server error"}}')
        elif fault == "slow":
            time.sleep(1.0)  # past the client's 0.5 s time-out
            self._send(200, b"{}")
        elif fault == "truncate":
            body = self.files.get(urlparse(self.path).path, b'{"tracks": [{"id": "x"}, {"id": "y"}]}')
            self._send(200, body[: len(body) // 2], length=len(body))
            self.close_connection = True
        elif fault == "quota":
            self._send(200, b'{"error": {"type": "Exception", "message": "Quota limit exceeded", "code": 4}}')
        return fault is not None

    def do_POST(self) -> None:  # noqa: N802 — the token endpoint
        with self.lock:
            self.requests[urlparse(self.path).path] += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._send(401, b'{"error": "invalid_client"}')
            return
        self._send(200, json.dumps({"access_token": "token-abc", "token_type": "Bearer", "expires_in": 3600}).encode())

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        url = url._replace(path=url.path.rstrip("/"))  # spotipy asks for /v1/albums/?ids=…
        query = parse_qs(url.query)
        with self.lock:
            self.requests[url.path] += 1
        base = f"http://127.0.0.1:{self.server.server_port}"
        if url.path.startswith("/ws/2/"):
            with self.lock:
                self.musicbrainz_times.append(time.monotonic())
        if url.path.startswith("/v1/") and self.headers.get("Authorization") != "Bearer token-abc":
            self._send(401, b'{"error": {"status": 401, "message": "no token"}}')
        elif url.path.startswith(("/ws/2/", "/coverart/")) and self.headers.get("User-Agent") != USER_AGENT:
            self._send(403, b'{"error": "say who you are in the User-Agent"}')
        elif self._fault(url.path):
            return
        elif url.path == "/ws/2/url":
            self._musicbrainz_urls(query["resource"])
        elif url.path.startswith("/ws/2/release/"):
            release = url.path.rsplit("/", 1)[1]
            genres = {"id": release, "genres": [{"name": "hip hop", "count": 3}],
                      "release-group": {"id": "rg-" + release, "genres": [{"name": "trap", "count": 4},
                                                                          {"name": "hip hop", "count": 2}]}}
            self._send(200, json.dumps(genres).encode()) if release in RELEASES.values() else self._send(404, b"{}")
        elif url.path.startswith("/coverart/release/") and url.path.endswith("/front-500"):
            release = url.path.split("/")[3]
            if release in RELEASES.values() and release != NO_FRONT_COVER:
                self._send(307, b"", "text/plain", headers={"Location": f"{base}/image/mb-{release}.jpg"})
            else:
                self._send(404, b"not found", "text/plain")
        elif url.path == "/v1/albums":
            albums = [None if a == UNKNOWN_ALBUM else
                      {"id": a, "images": [{"url": f"{base}/image/{a}-small.jpg", "width": 64},
                                           {"url": f"{base}/image/{a}.jpg", "width": 640}]}
                      for a in query["ids"][0].split(",")]
            self._send(200, json.dumps({"albums": albums}).encode())
        elif url.path == "/v1/tracks":
            tracks = [{"id": t, "preview_url": f"{base}/preview/{t}.mp3" if t == SPOTIFY_PREVIEW else None}
                      for t in query["ids"][0].split(",")]
            self._send(200, json.dumps({"tracks": tracks}).encode())
        elif url.path == "/search":
            title = query["q"][0].split('track:"')[1].rstrip('"')
            track = TRACKS[int(title.split()[-1]) - 1]
            found = [] if track == NO_PREVIEW else [{"id": 1, "type": "track", "title": title,
                                                     "preview": f"{base}/preview/{track}.mp3"}]
            self._send(200, json.dumps({"data": found, "total": len(found)}).encode())
        elif url.path in self.files:
            if url.path == self.gate_path and not self.gate.is_set():
                self.gate_reached.set()
                self.gate.wait(30)  # holds the crawl here until the test has killed it
            content_type = "image/jpeg" if url.path.endswith(".jpg") else "audio/mpeg"
            self._send(200, self.files[url.path], content_type)
        else:
            self._send(404, b'{"error": {"status": 404, "message": "not found"}}')


    def _musicbrainz_urls(self, resources: list[str]) -> None:
        linked = {f"https://open.spotify.com/album/{a}": r for a, r in RELEASES.items()}
        entities = [{"id": f"url-{i}", "resource": link,
                     "relations": [{"type": "free streaming", "target-type": "release",
                                    "release": {"id": linked[link], "title": "An album"}}]}
                    for i, link in enumerate(resources) if link in linked]
        if len(resources) == 1:  # one resource: the URL entity itself, or 404
            self._send(200, json.dumps(entities[0]).encode()) if entities else self._send(404, b'{"error": "Not Found"}')
        else:
            self._send(200, json.dumps({"url-count": len(entities), "url-offset": 0, "urls": entities}).encode())


@pytest.fixture()
def server():
    FakeMusicApi.files = {f"/image/{a}.jpg": _jpeg(i) for i, a in enumerate(ALBUMS)}
    FakeMusicApi.files[f"/image/{CORRUPT_COVER}.jpg"] = b"<html>not an image</html>"
    FakeMusicApi.files.update({f"/preview/{t}.mp3": _mp3(220 + 40 * i) for i, t in enumerate(TRACKS)})
    FakeMusicApi.files.update({f"/image/mb-{r}.jpg": _jpeg(100 + i) for i, r in enumerate(RELEASES.values())})
    FakeMusicApi.faults = {
        "/v1/albums": ["429"], "/v1/tracks": ["truncate", "500"], "/search": ["429", "quota"],
        f"/image/{ALBUMS[0]}.jpg": ["429"], f"/image/{ALBUMS[1]}.jpg": ["500", "503"],
        f"/image/{ALBUMS[2]}.jpg": ["truncate"], f"/image/{ALBUMS[3]}.jpg": ["slow"],
        f"/preview/{TRACKS[1]}.mp3": ["truncate"], f"/preview/{TRACKS[2]}.mp3": ["slow"],
    }
    FakeMusicApi.requests = Counter()
    FakeMusicApi.musicbrainz_times = []
    FakeMusicApi.gate, FakeMusicApi.gate_reached = threading.Event(), threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeMusicApi)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def _command(items_csv: Path, out: Path, base: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "crawl.py"), str(items_csv), "--out", str(out),
            "--spotify-api", f"{base}/v1/", "--spotify-token-url", f"{base}/api/token", "--deezer-api", base,
            "--musicbrainz-api", f"{base}/ws/2/", "--coverart-api", f"{base}/coverart/", "--user-agent", USER_AGENT,
            "--timeout", "0.5", "--backoff", "0.05", "--min-interval", "0", "--musicbrainz-min-interval", "0",
            "--no-progress"]


def _latest(out: Path) -> pd.DataFrame:
    status = pd.read_csv(out / "crawl_status.csv", dtype=str, keep_default_na=False)
    return status.drop_duplicates(["item_id", "kind"], keep="last").set_index(["item_id", "kind"])


def test_crawl_survives_faults_and_an_interruption(server, tmp_path):
    items = pd.DataFrame({"item_id": [f"musicoset:{a}" for a in ALBUMS], "label": "rap", "album_id": ALBUMS,
                          "artist_names": "Someone|Other", "track_id": TRACKS,
                          "track_title": [f"Song {i}" for i in range(1, 9)]})
    bare = pd.DataFrame({"item_id": ["musicoset:bare"], "label": "rap"})  # nothing to look up or search
    items = pd.concat([items, bare], ignore_index=True).fillna("")
    items.to_csv(tmp_path / "items.csv", index=False)
    out = tmp_path / "crawl"
    env = {**os.environ, "SPOTIPY_CLIENT_ID": CLIENT_ID, "SPOTIPY_CLIENT_SECRET": CLIENT_SECRET}
    logs = []

    first = subprocess.Popen(_command(tmp_path / "items.csv", out, server), env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The last preview's first request is held by the server, so the crawl is killed while it waits
    # there (every cover and most previews done), never after it has finished.
    assert FakeMusicApi.gate_reached.wait(90), "the first crawl never reached its last preview"
    assert first.poll() is None
    first.send_signal(signal.SIGKILL)
    logs.append(first.communicate()[0])
    FakeMusicApi.gate.set()
    done_first = {key for key, row in _latest(out).iterrows() if row["status"] == "ok"}
    assert len(done_first) >= 3
    files_first = {p: Path(row["path"]).read_bytes() for p, row in _latest(out).iterrows() if row["status"] == "ok"}
    requests_after_first = Counter(FakeMusicApi.requests)

    second = subprocess.run(_command(tmp_path / "items.csv", out, server), env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    logs.append(second.stdout + second.stderr)
    assert second.returncode == 0, second.stderr[-2000:]
    latest = _latest(out)
    fetched_again = [path for path, n in FakeMusicApi.requests.items()
                     if n > requests_after_first[path] and path.startswith(("/image/", "/preview/"))]
    for item_id, kind in done_first:
        name = item_id.split(":")[1] if kind == "cover" else TRACKS[ALBUMS.index(item_id.split(":")[1])]
        assert not [p for p in fetched_again if name in p], f"{item_id} {kind} was downloaded again"
        assert Path(latest.loc[(item_id, kind), "path"]).read_bytes() == files_first[(item_id, kind)]

    for album, track in zip(ALBUMS, TRACKS):
        item_id = f"musicoset:{album}"
        cover, preview = latest.loc[(item_id, "cover")], latest.loc[(item_id, "preview")]
        if album == UNKNOWN_ALBUM:
            assert cover["status"] == "unavailable"
        elif album == CORRUPT_COVER:
            assert cover["status"] == "failed" and "cover" in cover["detail"].lower()
        else:
            assert cover["status"] == "ok", cover.to_dict()
            assert Path(cover["path"]).read_bytes() == FakeMusicApi.files[f"/image/{album}.jpg"]  # intact
        if track == NO_PREVIEW:
            assert preview["status"] == "unavailable"
        else:
            assert preview["status"] == "ok", preview.to_dict()
            assert preview["source"] == ("spotify" if track == SPOTIFY_PREVIEW else "deezer")
            assert Path(preview["path"]).read_bytes() == FakeMusicApi.files[f"/preview/{track}.mp3"]
    assert latest.loc[("musicoset:bare", "cover"), "status"] == latest.loc[("musicoset:bare", "preview"), "status"] \
        == "unavailable"
    assert not [p for p in out.rglob("*") if ".part-" in p.name]
    assert all(FakeMusicApi.requests[f"/image/{a}.jpg"] >= 2 for a in ALBUMS[:4])  # each fault was met and retried
    table = pd.read_csv(out / "items.csv", dtype=str, keep_default_na=False)
    assert (table["cover_path"] != "").sum() == 6 and (table["audio_path"] != "").sum() == 7

    before_third = Counter(FakeMusicApi.requests)
    third = subprocess.run(_command(tmp_path / "items.csv", out, server), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    logs.append(third.stdout + third.stderr)
    downloads = {p for p, n in FakeMusicApi.requests.items()
                 if n > before_third[p] and p.startswith(("/image/", "/preview/"))}
    assert downloads == {f"/image/{CORRUPT_COVER}.jpg"}  # only the failed item is tried again

    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert not any(CLIENT_SECRET.encode() in content for content in written)
    assert not any(CLIENT_SECRET in log for log in logs)


def test_missing_credentials_is_a_clear_error_unless_previews_come_from_deezer(server, tmp_path, monkeypatch):
    from acquire.crawl import CrawlSettings, crawl

    monkeypatch.delenv("SPOTIPY_CLIENT_ID", raising=False)
    monkeypatch.delenv("SPOTIPY_CLIENT_SECRET", raising=False)
    with pytest.raises(RuntimeError, match="SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET"):
        crawl(pd.DataFrame({"item_id": ["a"], "album_id": ["b"], "track_id": [""]}), tmp_path,
              settings=CrawlSettings(musicbrainz=False))  # covers would have no source
    FakeMusicApi.faults = {}
    settings = CrawlSettings(deezer_api=server, spotify_api=f"{server}/v1/", timeout_s=2, min_interval_s=0)
    items = pd.DataFrame({"item_id": ["x"], "track_id": [TRACKS[3]], "track_title": ["Song 4"], "artist_names": ["A"]})
    crawled = crawl(items, tmp_path / "deezer", kinds=["preview"], settings=settings, progress=False)
    assert Path(crawled.loc[0, "audio_path"]).read_bytes() == FakeMusicApi.files[f"/preview/{TRACKS[3]}.mp3"]
    assert not any(path.startswith("/v1/") for path in FakeMusicApi.requests)  # Spotify never asked

    monkeypatch.setenv("SPOTIPY_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SPOTIPY_CLIENT_SECRET", "wrong-secret")
    settings = CrawlSettings(spotify_token_url=f"{server}/api/token", spotify_api=f"{server}/v1/", min_interval_s=0)
    crawl(pd.DataFrame({"item_id": ["y"], "album_id": [ALBUMS[0]]}), tmp_path / "bad", ["cover"], settings, progress=False)
    status = pd.read_csv(tmp_path / "bad" / "crawl_status.csv")
    assert status["status"].tolist() == ["failed"] and "invalid_client" in status["detail"][0]
    assert FakeMusicApi.requests["/api/token"] == 1  # wrong credentials are not retried


def test_musicbrainz_gives_covers_and_genre_tags_without_spotify(server, tmp_path, monkeypatch):
    from acquire.crawl import CrawlSettings, crawl

    monkeypatch.delenv("SPOTIPY_CLIENT_ID", raising=False)
    monkeypatch.delenv("SPOTIPY_CLIENT_SECRET", raising=False)
    FakeMusicApi.faults = {"/ws/2/url": ["503"], f"/ws/2/release/{RELEASES[ALBUMS[0]]}": ["429"],
                           f"/ws/2/release/{RELEASES[ALBUMS[1]]}": ["truncate"],
                           f"/coverart/release/{RELEASES[ALBUMS[1]]}/front-500": ["500"]}
    settings = CrawlSettings(musicbrainz_api=f"{server}/ws/2/", coverart_api=f"{server}/coverart/",
                             user_agent=USER_AGENT, timeout_s=2, backoff_s=0.05, min_interval_s=0,
                             musicbrainz_min_interval_s=0.2)
    items = pd.DataFrame({"item_id": [f"musicoset:{a}" for a in ALBUMS[:4]] + ["no-album"],
                          "album_id": ALBUMS[:4] + [""]})
    crawled = crawl(items, tmp_path, kinds=["cover", "tags"], settings=settings, progress=False)

    latest = _latest(tmp_path)
    for album in ALBUMS[:2]:
        cover = latest.loc[(f"musicoset:{album}", "cover")]
        assert cover["status"] == "ok" and cover["source"] == "coverartarchive"
        assert Path(cover["path"]).read_bytes() == FakeMusicApi.files[f"/image/mb-{RELEASES[album]}.jpg"]
    assert latest.loc[(f"musicoset:{ALBUMS[2]}", "cover"), "status"] == "unavailable"  # release without art
    assert latest.loc[(f"musicoset:{ALBUMS[3]}", "cover"), "status"] == "unavailable"  # no linked release
    assert latest.loc[("no-album", "cover"), "status"] == latest.loc[("no-album", "tags"), "status"] == "unavailable"
    by_item = crawled.set_index("item_id")
    for album in ALBUMS[:3]:
        assert by_item.loc[f"musicoset:{album}", "mb_release_id"] == RELEASES[album]
        assert by_item.loc[f"musicoset:{album}", "mb_genres"] == "hip hop|trap"  # 3 + 2 votes, then 4
    assert by_item.loc[f"musicoset:{ALBUMS[3]}", "mb_genres"] == ""
    assert not any(FakeMusicApi.faults.values())  # every injected fault was met, and retried past
    assert FakeMusicApi.requests["/ws/2/url"] == 2  # one batched lookup (after a 503), shared by covers and tags
    gaps = np.diff(FakeMusicApi.musicbrainz_times)
    assert len(gaps) >= 5 and gaps.min() >= 0.19  # MusicBrainz asks for requests spaced out

    before = Counter(FakeMusicApi.requests)
    again = crawl(items, tmp_path, kinds=["cover"], settings=settings, progress=False)
    crawl(items, tmp_path, kinds=["cover", "tags"], settings=settings, progress=False)
    assert FakeMusicApi.requests == before  # nothing asked or fetched again
    assert again.set_index("item_id").loc[f"musicoset:{ALBUMS[0]}", "mb_genres"] == "hip hop|trap"  # kept
    assert not [p for p in tmp_path.rglob("*") if ".part-" in p.name]
