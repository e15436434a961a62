"""MusicOSet → an album item table labelled with broad genres, ready for the crawler.

Reads the tables with :mod:`data.musicoset` (repairing broken rows) and labels each album by
its artists' genres with :class:`data.musicoset.ArtistGenres` (the rule, and ``genre_map.csv``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data.items import finish_table, problems_frame
from data.musicoset import ALBUMS_TABLE, SPOTIFY_ID, ArtistGenres, load_musicoset_tables, read_tsv_repairing


@dataclass
class MusicosetBuild:
    """The album item table and the record of how it was built."""

    items: pd.DataFrame
    problems: pd.DataFrame
    unmapped_genres: pd.DataFrame
    unlabelled: pd.DataFrame

    def counts(self, label_sets: dict[str, list[str]]) -> dict[str, dict[str, int]]:
        """Albums per class for each named label set."""
        return {name: {label: int((self.items["label"] == label).sum()) for label in labels}
                for name, labels in label_sets.items()}


def build_musicoset_items(root: str | Path, genre_map: dict[str, str] | None = None) -> MusicosetBuild:
    """Join artists → releases → albums (→ tracks → songs) and label each album.

    One row per album with a label: ``item_id`` (``musicoset:<album_id>``), ``label``,
    ``group`` (the first artist's id, so an artist never straddles splits), ``source``,
    empty ``cover_path``/``audio_path`` (filled by the crawler), then ``album_id``,
    ``artist_ids``/``artist_names`` (``|``-joined), ``cover_url`` (from ``albums.csv`` when it
    is present, else empty: the crawler asks Spotify for it), ``label_share``, ``label_note``
    and the album's most popular song (``track_id``, ``track_title``) for preview search.
    """
    root = Path(root)
    tables, problems = load_musicoset_tables(root, ["artists", "releases", "songs", "tracks"])
    genres = ArtistGenres(tables["artists"], genre_map)
    problem_records = problems.to_dict(orient="records") + genres.problems

    releases = tables["releases"]
    bad_ids = ~releases["album_id"].str.match(SPOTIFY_ID) | ~releases["artist_id"].str.match(SPOTIFY_ID)
    for _, row in releases[bad_ids].iterrows():
        problem_records.append({"where": "releases.csv", "item_id": row["album_id"], "reason": "malformed Spotify id"})
    releases = releases[~bad_ids]

    best_song = _most_popular_song_per_album(tables["tracks"], tables["songs"])
    cover_urls = _cover_urls(root)
    rows, unlabelled = [], []
    for album_id, album_artists in releases.groupby("album_id", sort=False)["artist_id"]:
        known = genres.known(list(album_artists))
        label, share, note = genres.label(known)
        if not label:
            unlabelled.append({"album_id": album_id, "reason": note})
            continue
        song = best_song.get(album_id, {})
        rows.append({"item_id": f"musicoset:{album_id}", "label": label, "group": known[0], "source": "musicoset",
                     "album_id": album_id, "artist_ids": "|".join(known),
                     "artist_names": "|".join(genres.artists.loc[known, "name"]), "cover_url": cover_urls.get(album_id, ""),
                     "label_share": round(share, 4), "label_note": note,
                     "track_id": song.get("song_id", ""), "track_title": song.get("song_name", "")})
    items = finish_table(pd.DataFrame(rows))
    return MusicosetBuild(items, problems_frame(problem_records),
                          _unmapped(genres.genre_lists, genres.genre_map, releases),
                          pd.DataFrame(unlabelled, columns=["album_id", "reason"]))


def _most_popular_song_per_album(tracks: pd.DataFrame, songs: pd.DataFrame) -> dict[str, dict]:
    joined = tracks.merge(songs[["song_id", "song_name", "popularity"]], on="song_id", how="inner")
    joined["popularity"] = pd.to_numeric(joined["popularity"], errors="coerce").fillna(-1)
    best = joined.sort_values(["album_id", "popularity", "song_id"], ascending=[True, False, True])
    return best.drop_duplicates("album_id").set_index("album_id")[["song_id", "song_name"]].to_dict(orient="index")


def _cover_urls(root: Path) -> dict[str, str]:
    path = root / ALBUMS_TABLE
    if not path.is_file():
        return {}
    albums = read_tsv_repairing(path).frame
    return dict(zip(albums["album_id"], albums["image_url"])) if "image_url" in albums.columns else {}


def _unmapped(genre_lists: dict[str, list[str]], genre_map: dict[str, str], releases: pd.DataFrame) -> pd.DataFrame:
    """Fine genres the map lacks, with how many artists and albums carry them (to extend the map)."""
    albums_per_artist = releases["artist_id"].value_counts()
    n_artists: Counter = Counter()
    n_albums: Counter = Counter()
    for artist_id, genres in genre_lists.items():
        for genre in set(genres) - set(genre_map):
            n_artists[genre] += 1
            n_albums[genre] += int(albums_per_artist.get(artist_id, 0))
    table = pd.DataFrame({"genre": list(n_artists), "artists": list(n_artists.values()),
                          "albums": [n_albums[g] for g in n_artists]}, columns=["genre", "artists", "albums"])
    return table.sort_values(["albums", "artists", "genre"], ascending=[False, False, True]).reset_index(drop=True)
