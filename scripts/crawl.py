"""Fetch covers, previews and genre tags for a MusicOSet item table (from scripts/build_musicoset.py).

Usage: [SPOTIPY_CLIENT_ID=… SPOTIPY_CLIENT_SECRET=…] .venv/bin/python scripts/crawl.py ITEMS_CSV --out DIR
       [--kinds cover preview tags] [--no-deezer] [--no-musicbrainz] [--user-agent "app/1.0 ( you@example.org )"]

Without Spotify credentials covers come from MusicBrainz / Cover Art Archive and previews from Deezer.

Read docs/sources.md (the terms of the sources) before crawling. Re-running resumes: finished items
are skipped; ``DIR/crawl_status.csv`` holds one row per item and kind, ``DIR/items.csv`` the
item table with the paths of what is on disk.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from acquire.crawl import KINDS, CrawlSettings, crawl
from engine.cli import report_user_errors


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    defaults = CrawlSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=["cover", "preview"])
    parser.add_argument("--no-deezer", action="store_true", help="no Deezer search fallback for previews")
    parser.add_argument("--no-musicbrainz", action="store_true",
                        help="no MusicBrainz / Cover Art Archive fallback for covers (and no tags)")
    parser.add_argument("--user-agent", default=defaults.user_agent,
                        help="sent with every request; MusicBrainz asks for the application and a contact")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    # Endpoints can be moved (a proxy, a mirror, the test server); credentials never go on the command line.
    parser.add_argument("--spotify-api", default=defaults.spotify_api)
    parser.add_argument("--spotify-token-url", default=defaults.spotify_token_url)
    parser.add_argument("--deezer-api", default=defaults.deezer_api)
    parser.add_argument("--musicbrainz-api", default=defaults.musicbrainz_api)
    parser.add_argument("--coverart-api", default=defaults.coverart_api)
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s)
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s,
                        help="seconds one download may take in all, every attempt and wait included")
    parser.add_argument("--min-rate", type=float, default=defaults.min_rate_bytes_s,
                        help="bytes/s under which a download is given up (after its first seconds)")
    parser.add_argument("--backoff", type=float, default=defaults.backoff_s, help="first back-off, seconds (doubles)")
    parser.add_argument("--min-interval", type=float, default=defaults.min_interval_s)
    parser.add_argument("--musicbrainz-min-interval", type=float, default=defaults.musicbrainz_min_interval_s,
                        help="seconds between MusicBrainz requests (its limit is one a second)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = CrawlSettings(spotify_api=args.spotify_api, spotify_token_url=args.spotify_token_url,
                             deezer_api=args.deezer_api, musicbrainz_api=args.musicbrainz_api,
                             coverart_api=args.coverart_api, user_agent=args.user_agent, timeout_s=args.timeout,
                             deadline_s=args.deadline, min_rate_bytes_s=args.min_rate, backoff_s=args.backoff,
                             min_interval_s=args.min_interval,
                             musicbrainz_min_interval_s=args.musicbrainz_min_interval,
                             deezer_fallback=not args.no_deezer, musicbrainz=not args.no_musicbrainz)
    items = pd.read_csv(args.items, dtype=str, keep_default_na=False)
    if args.limit:
        items = items.head(args.limit)
    crawled = crawl(items, args.out, args.kinds, settings, progress=not args.no_progress)
    status = pd.read_csv(args.out / "crawl_status.csv", dtype=str, keep_default_na=False)
    latest = status.drop_duplicates(["item_id", "kind"], keep="last")
    print(latest.groupby(["kind", "status"]).size().to_string())
    tagged = f", genre tags: {(crawled['mb_release_id'] != '').sum()}" if "mb_release_id" in crawled else ""
    print(f"covers on disk: {(crawled['cover_path'] != '').sum()}, previews: {(crawled['audio_path'] != '').sum()}"
          f"{tagged}; item table: {args.out / 'items.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
