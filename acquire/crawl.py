"""Fetch album covers, 30-second previews and genre tags for an item table.

Covers come from Spotify by album id, else from the Cover Art Archive for the MusicBrainz release
linked to that Spotify album; previews from Spotify's ``preview_url``, else a Deezer search by
artist + title; genre tags (kind ``tags``) from that MusicBrainz release and its release group.
Spotify is reached through spotipy with client credentials read from the environment
(``SPOTIPY_CLIENT_ID`` / ``SPOTIPY_CLIENT_SECRET``); they are never put in a config, a status
row or a log line, and the token stays in memory. Without them, covers come from MusicBrainz
alone and previews from Deezer alone. Deezer is reached through deezer-python.

Robustness, per request: see :mod:`acquire.http` (429 waits for ``Retry-After``, 5xx, time-outs,
dropped connections and truncated bodies are retried; refused connections fail at once). Per item:
each file is written under a temporary name, checked to decode (the cover as an image, the
preview as audio) and then renamed into place; a status row is appended to ``crawl_status.csv``
at once, so an interrupted crawl resumes where it stopped and a second run downloads nothing
already done. Items that cannot exist (unknown album, no preview anywhere) are ``unavailable``
and not asked again; items that failed after all retries are ``failed`` and retried next run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from acquire.http import Retrier, RetryPolicy, TruncatedResponse, Unavailable, download
from acquire.verify import verify_audio, verify_cover
from engine.io import write_bytes_atomic
from engine.progress import progress_bar

log = logging.getLogger(__name__)
# spotipy logs request headers (the bearer token) at DEBUG: keep its records above that.
logging.getLogger("spotipy").setLevel(logging.INFO)

STATUS_COLUMNS = ["item_id", "kind", "status", "source", "path", "bytes", "detail", "time"]
CREDENTIAL_VARIABLES = ("SPOTIPY_CLIENT_ID", "SPOTIPY_CLIENT_SECRET")
KINDS = ("cover", "preview", "tags")
SPOTIFY_ALBUM_LINK = "https://open.spotify.com/album/{}"


@dataclass(frozen=True)
class CrawlSettings(RetryPolicy):
    """Endpoints and politeness (and the retry policy). The defaults are the public services; tests point them
    at 127.0.0.1."""

    spotify_api: str = "https://api.spotify.com/v1/"
    spotify_token_url: str = "https://accounts.spotify.com/api/token"
    deezer_api: str = "https://api.deezer.com"
    musicbrainz_api: str = "https://musicbrainz.org/ws/2/"
    coverart_api: str = "https://coverartarchive.org/"
    #: MusicBrainz asks every client for a User-Agent naming the application and a contact.
    user_agent: str = "genrefusion/0.1.0 ( research crawler; no contact given )"
    #: MusicBrainz allows one request a second per client.
    musicbrainz_min_interval_s: float = 1.0
    deezer_fallback: bool = True
    musicbrainz: bool = True


def _credentials() -> tuple[str, str]:
    missing = [name for name in CREDENTIAL_VARIABLES if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"Spotify client credentials are read from the environment; set {' and '.join(missing)} "
                           "(https://developer.spotify.com/dashboard). They are never written to logs or configs.")
    return os.environ["SPOTIPY_CLIENT_ID"], os.environ["SPOTIPY_CLIENT_SECRET"]


class SpotifySource:
    """Album cover URLs and track preview URLs through spotipy (client-credentials flow)."""

    def __init__(self, settings: CrawlSettings, session: requests.Session, retry: Retrier) -> None:
        import spotipy
        from spotipy.cache_handler import MemoryCacheHandler
        from spotipy.oauth2 import SpotifyClientCredentials

        client_id, client_secret = _credentials()
        auth = SpotifyClientCredentials(client_id, client_secret, requests_session=session,
                                        cache_handler=MemoryCacheHandler(), requests_timeout=settings.timeout_s)
        auth.OAUTH_TOKEN_URL = settings.spotify_token_url
        # A plain session: no urllib3 retry layer, so 429/5xx reach the Retrier with their headers.
        self.client = spotipy.Spotify(auth_manager=auth, requests_session=session, requests_timeout=settings.timeout_s,
                                      retries=0, status_retries=0)
        self.client.prefix = settings.spotify_api
        self.retry = retry

    def _json(self, call: Callable[[], Any], what: str) -> Any:
        def checked() -> Any:
            result = call()
            if result is None:  # spotipy turns an unparsable body into None
                raise TruncatedResponse("empty or unparsable JSON")
            return result
        return self.retry(checked, what)

    def _lookup(self, ids: list[str], batch: int, call: Callable[[list[str]], Any], key: str,
                extract: Callable[[dict], str | None]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            answers = self._json(lambda: call(chunk), f"spotify {key} {chunk[0]}…")[key]
            for one_id, answer in zip(chunk, answers):
                found[one_id] = extract(answer or {})
        return found

    def cover_urls(self, album_ids: list[str]) -> dict[str, str | None]:
        """``album_id → largest cover URL`` (``None``: the album is unknown or has no image); ≤ 20 ids a call."""
        def largest(album: dict) -> str | None:
            images = sorted(album.get("images") or [], key=lambda i: -(i.get("width") or 0))
            return images[0]["url"] if images else None
        return self._lookup(album_ids, 20, self.client.albums, "albums", largest)

    def preview_urls(self, track_ids: list[str]) -> dict[str, str | None]:
        """``track_id → preview_url`` (``None`` when Spotify gives none, as for apps made after Nov 2024)."""
        return self._lookup(track_ids, 50, self.client.tracks, "tracks", lambda track: track.get("preview_url"))


class DeezerSource:
    """Preview URL by artist + title through deezer-python's search."""

    def __init__(self, settings: CrawlSettings, retry: Retrier) -> None:
        import deezer
        import httpx

        self.client = deezer.Client()
        self.client.base_url = settings.deezer_api
        self.client.timeout = httpx.Timeout(settings.timeout_s)
        self.retry = retry

    def preview_url(self, artist: str, title: str) -> str | None:
        def search() -> str | None:
            for track in self.client.search(artist=artist, track=title)[:5]:
                if getattr(track, "preview", ""):
                    return track.preview
            return None
        return self.retry(search, f"deezer search {artist} – {title}")


class MusicBrainzSource:
    """Releases linked to Spotify albums, their genre tags, and their Cover Art Archive front covers.

    Plain HTTP through the crawler's :class:`Retrier`, not musicbrainzngs: that client retries
    inside itself (ignoring ``Retry-After``), sets no time-out and keeps its settings module-global.
    """

    #: Spotify album links per URL lookup (the web service takes up to 100 ``resource`` values).
    batch = 100

    def __init__(self, settings: CrawlSettings, session: requests.Session, retry: Retrier) -> None:
        self.api = settings.musicbrainz_api.rstrip("/") + "/"
        self.coverart = settings.coverart_api.rstrip("/") + "/"
        self.session, self.retry, self.timeout_s = session, retry, settings.timeout_s
        self.headers = {"User-Agent": settings.user_agent, "Accept": "application/json"}
        self._releases: dict[str, str | None] = {}

    def _json(self, path: str, params: dict[str, Any], what: str) -> dict | None:
        """The decoded answer, or ``None`` for 404 (nothing of that name)."""
        def call() -> dict | None:
            response = self.session.get(self.api + path, params={**params, "fmt": "json"}, headers=self.headers,
                                        timeout=self.timeout_s)
            if response.status_code == 404:
                return None
            response.raise_for_status()
            return response.json()
        return self.retry(call, what)

    def release_ids(self, album_ids: list[str]) -> dict[str, str | None]:
        """``album_id → MusicBrainz release id`` linked to ``open.spotify.com/album/<id>`` (``None``: no link)."""
        ask = [a for a in dict.fromkeys(album_ids) if a not in self._releases]
        for start in range(0, len(ask), self.batch):
            chunk = ask[start:start + self.batch]
            links = {SPOTIFY_ALBUM_LINK.format(a): a for a in chunk}
            answer = self._json("url", {"resource": list(links), "inc": "release-rels"},
                                f"musicbrainz url lookup {chunk[0]}…") or {}
            # One resource is answered with the URL entity itself, several with a list of them.
            entities = answer.get("urls", [answer] if "resource" in answer else [])
            found = {}
            for entity in entities:
                releases = [r["release"]["id"] for r in entity.get("relations", [])
                            if r.get("target-type") == "release" and r.get("release")]
                if entity.get("resource") in links and releases:
                    found[links[entity["resource"]]] = releases[0]
            self._releases.update({a: found.get(a) for a in chunk})
        return {a: self._releases[a] for a in album_ids}

    def genres(self, release_id: str) -> list[str]:
        """Genre names of the release and its release group, most votes first."""
        answer = self._json(f"release/{release_id}", {"inc": "genres release-groups"},
                            f"musicbrainz release {release_id}")
        if answer is None:
            raise Unavailable(f"MusicBrainz has no release {release_id}")
        votes: Counter[str] = Counter()
        for entity in (answer, answer.get("release-group") or {}):
            for genre in entity.get("genres") or []:
                votes[genre["name"]] += int(genre.get("count") or 0)
        return sorted(votes, key=lambda name: (-votes[name], name))

    def cover_url(self, release_id: str) -> str:
        """The Cover Art Archive's 500-pixel front cover of a release (404, hence unavailable, when it has none)."""
        return f"{self.coverart}release/{release_id}/front-500"


class StatusTable:
    """``crawl_status.csv``: one row appended per finished item (flushed at once); the last row per item wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.latest: dict[tuple[str, str], dict] = {}
        if path.is_file() and path.stat().st_size:
            for row in pd.read_csv(path, dtype=str, keep_default_na=False).to_dict(orient="records"):
                self.latest[(row["item_id"], row["kind"])] = row
        new = not path.is_file() or not path.stat().st_size
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", newline="")
        self._writer = csv.DictWriter(self._handle, STATUS_COLUMNS)
        if new:
            self._writer.writeheader()

    def done(self, item_id: str, kind: str) -> bool:
        """Finished for good: ``ok`` with its file still there, or ``unavailable``."""
        row = self.latest.get((item_id, kind))
        if row is None:
            return False
        return row["status"] == "unavailable" or (row["status"] == "ok" and Path(row["path"]).is_file())

    def record(self, item_id: str, kind: str, status: str, source: str = "", path: str = "", size: int = 0,
               detail: str = "") -> None:
        row = {"item_id": item_id, "kind": kind, "status": status, "source": source, "path": path,
               "bytes": size, "detail": detail[:300], "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._writer.writerow(row)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.latest[(item_id, kind)] = {k: str(v) for k, v in row.items()}

    def close(self) -> None:
        self._handle.close()


def _suffix(url: str, default: str) -> str:
    suffix = Path(url.split("?")[0]).suffix.lower()
    return suffix if suffix in {".jpg", ".jpeg", ".png", ".mp3", ".ogg", ".m4a", ".wav"} else default


def crawl(items: pd.DataFrame, out_dir: str | Path, kinds: Iterable[str] = ("cover", "preview"),
          settings: CrawlSettings | None = None, progress: bool = True) -> pd.DataFrame:
    """Fetch covers, previews and/or genre tags for the item table from :mod:`data.musicoset` into ``out_dir``.

    Uses ``item_id`` and, where present, ``album_id`` / ``cover_url`` (covers and tags; a filled
    ``cover_url`` is fetched without asking anyone) and ``track_id``, ``track_title``,
    ``artist_names`` (previews). An item with nothing to go on is recorded ``unavailable``. Returns
    the item table with ``cover_path`` / ``audio_path`` filled for what is on disk and, once tags
    were crawled into ``out_dir``, ``mb_release_id`` and ``mb_genres`` (``|``-joined, most votes
    first); writes it to ``out_dir/items.csv``.
    """
    settings = settings or CrawlSettings()
    out_dir = Path(out_dir).resolve()  # absolute paths in the item table, wherever it is read from
    kinds = list(kinds)
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {list(KINDS)}")
    if "item_id" not in items.columns:
        raise ValueError(f"the item table needs an item_id column; it has {list(items.columns)}")
    items = items.fillna("").astype(str).reset_index(drop=True)
    for column in ("album_id", "cover_url", "track_id", "track_title", "artist_names"):
        if column not in items.columns:
            items[column] = ""
    session = requests.Session()
    session.headers["User-Agent"] = settings.user_agent
    retry = Retrier(settings)
    deezer = DeezerSource(settings, Retrier(settings)) if settings.deezer_fallback else None
    musicbrainz = None
    if settings.musicbrainz:
        musicbrainz = MusicBrainzSource(settings, session,
                                        Retrier(replace(settings, min_interval_s=settings.musicbrainz_min_interval_s)))
    elif "tags" in kinds:
        raise ValueError("genre tags come from MusicBrainz, which these settings turn off")
    spotify = None
    if all(os.environ.get(name) for name in CREDENTIAL_VARIABLES):
        spotify = SpotifySource(settings, session, retry)
    elif ("cover" in kinds and musicbrainz is None) or ("preview" in kinds and deezer is None):
        _credentials()  # raises, naming the variables to set
    else:
        log.warning("no Spotify credentials: covers from MusicBrainz / Cover Art Archive only, previews from "
                    "Deezer search only")
    status = StatusTable(out_dir / "crawl_status.csv")
    try:
        if "cover" in kinds:
            _crawl_covers(items, out_dir, status, spotify, musicbrainz, session, retry, settings, progress)
        if "preview" in kinds:
            _crawl_previews(items, out_dir, status, spotify, deezer, session, retry, settings, progress)
        if "tags" in kinds:
            _crawl_tags(items, out_dir, status, musicbrainz, progress)
    finally:
        status.close()
    for kind, column in (("cover", "cover_path"), ("preview", "audio_path")):
        items[column] = [row["path"] if (row := status.latest.get((i, kind))) and row["status"] == "ok" else ""
                         for i in items["item_id"]]
    if any(kind == "tags" for _, kind in status.latest):  # this run's tags or an earlier run's
        tags = [_read_tags(row["path"]) if (row := status.latest.get((i, "tags"))) and row["status"] == "ok" else {}
                for i in items["item_id"]]
        items["mb_release_id"] = [t.get("release_id", "") for t in tags]
        items["mb_genres"] = ["|".join(t.get("genres", [])) for t in tags]
    items.to_csv(out_dir / "items.csv", index=False)
    return items


def _fetch_one(item_id: str, kind: str, url: str | None, source: str, target_stem: Path, verify, status: StatusTable,
               session: requests.Session, retry: Retrier, settings: CrawlSettings) -> None:
    if not url:
        status.record(item_id, kind, "unavailable", source, detail=f"{source} has no {kind} for this item")
        return
    target = target_stem.with_suffix(_suffix(url, target_stem.suffix or ".bin"))
    try:
        size = download(session, url, target, verify, retry, settings.timeout_s)
        status.record(item_id, kind, "ok", source, str(target), size)
    except Unavailable as error:
        status.record(item_id, kind, "unavailable", source, detail=str(error))
    except Exception as error:  # noqa: BLE001 — one bad item is recorded, never stops the crawl
        status.record(item_id, kind, "failed", source, detail=f"{type(error).__name__}: {error}")


def _file_stem(row: pd.Series, id_column: str) -> str:
    """The source id when there is one, else a digest of the item id (item ids may hold ``:`` or ``/``)."""
    return row[id_column] or hashlib.sha1(row["item_id"].encode()).hexdigest()[:16]


def _crawl_covers(items, out_dir, status, spotify, musicbrainz, session, retry, settings, progress) -> None:
    todo = items[~items["item_id"].map(lambda i: status.done(i, "cover"))]
    given = todo["cover_url"]
    ask = todo.loc[(given == "") & (todo["album_id"] != ""), "album_id"].drop_duplicates().tolist()
    spotify_urls: dict[str, str | None] = {}
    try:
        spotify_urls = spotify.cover_urls(ask) if ask and spotify is not None else {}
    except Exception as error:  # noqa: BLE001 — the lookup failing leaves every item retryable
        for item_id in todo["item_id"]:
            status.record(item_id, "cover", "failed", "spotify", detail=f"album lookup: {type(error).__name__}: {error}")
        return
    releases: dict[str, str | None] = {}
    if musicbrainz is not None and (missing := [a for a in ask if not spotify_urls.get(a)]):
        try:
            releases = musicbrainz.release_ids(missing)
        except Exception as error:  # noqa: BLE001 — Spotify's covers are still fetched
            log.warning("MusicBrainz lookup failed (%s); covers Spotify lacks are left for the next run", error)
            releases = {a: "" for a in missing}  # "": unknown for now, not "no release" (None)
    for index, row in progress_bar(todo.iterrows(), total=len(todo), desc="covers", enabled=progress):
        url, source = given[index] or spotify_urls.get(row["album_id"]), "spotify"
        if not url and row["album_id"] in releases:
            release = releases[row["album_id"]]
            source = "coverartarchive" if release else "musicbrainz"
            if release == "":
                status.record(row["item_id"], "cover", "failed", "musicbrainz", detail="release lookup failed")
                continue
            url = musicbrainz.cover_url(release) if release else None
        _fetch_one(row["item_id"], "cover", url, source, out_dir / "covers" / f"{_file_stem(row, 'album_id')}.jpg",
                   verify_cover, status, session, retry, settings)


def _crawl_tags(items, out_dir, status, musicbrainz, progress) -> None:
    todo = items[~items["item_id"].map(lambda i: status.done(i, "tags"))]
    albums = todo["album_id"][todo["album_id"] != ""].drop_duplicates().tolist()
    try:
        releases = musicbrainz.release_ids(albums) if albums else {}
    except Exception as error:  # noqa: BLE001 — every item stays retryable
        for item_id in todo["item_id"]:
            status.record(item_id, "tags", "failed", "musicbrainz",
                          detail=f"url lookup: {type(error).__name__}: {error}")
        return
    for _, row in progress_bar(todo.iterrows(), total=len(todo), desc="genre tags", enabled=progress):
        release = releases.get(row["album_id"])
        if not release:
            reason = "no MusicBrainz release links this Spotify album" if row["album_id"] else "no album_id"
            status.record(row["item_id"], "tags", "unavailable", "musicbrainz", detail=reason)
            continue
        try:
            record = {"album_id": row["album_id"], "release_id": release, "genres": musicbrainz.genres(release)}
            target = out_dir / "tags" / f"{_file_stem(row, 'album_id')}.json"
            size = write_bytes_atomic(target, json.dumps(record, ensure_ascii=False).encode())
            status.record(row["item_id"], "tags", "ok", "musicbrainz", str(target), size)
        except Unavailable as error:
            status.record(row["item_id"], "tags", "unavailable", "musicbrainz", detail=str(error))
        except Exception as error:  # noqa: BLE001 — recorded, retried next run
            status.record(row["item_id"], "tags", "failed", "musicbrainz", detail=f"{type(error).__name__}: {error}")


def _read_tags(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _crawl_previews(items, out_dir, status, spotify, deezer, session, retry, settings, progress) -> None:
    todo = items[~items["item_id"].map(lambda i: status.done(i, "preview"))]
    track_ids = [t for t in todo["track_id"].drop_duplicates() if t]
    try:
        spotify_urls = spotify.preview_urls(track_ids) if track_ids and spotify is not None else {}
    except Exception as error:  # noqa: BLE001 — fall back to Deezer for every track
        log.warning("Spotify track lookup failed (%s); using Deezer search only", error)
        spotify_urls = {}
    for _, row in progress_bar(todo.iterrows(), total=len(todo), desc="previews", enabled=progress):
        url, source = spotify_urls.get(row["track_id"]), "spotify"
        if not url and deezer is not None and row["track_title"]:
            source = "deezer"
            try:
                url = deezer.preview_url(row["artist_names"].split("|")[0], row["track_title"])
            except Exception as error:  # noqa: BLE001 — recorded, retried next run
                status.record(row["item_id"], "preview", "failed", source, detail=f"search: {type(error).__name__}: {error}")
                continue
        _fetch_one(row["item_id"], "preview", url, source, out_dir / "previews" / f"{_file_stem(row, 'track_id')}.mp3",
                   verify_audio, status, session, retry, settings)
