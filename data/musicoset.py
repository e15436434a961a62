"""MusicOSet's tab-separated tables → an album item table labelled with broad genres.

The tables are tab-separated and unquoted (titles and names contain quote characters), so
quoting is off and each row is checked by hand: a row broken over several lines is joined, a
cell wrapped whole in double quotes (an export that quoted it) is unquoted, and a row whose
field count still differs from the header's is dropped. Every repair and drop is counted.

Albums are labelled from their artists' Spotify genres through a mapping table kept as data
(``data/genre_map.csv``, ``genre,broad_genre``); see :func:`label_album` for the rule.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data.items import finish_table, problems_frame

TABLES = {
    "artists": "musicoset_metadata/artists.csv",
    "releases": "musicoset_metadata/releases.csv",
    "songs": "musicoset_metadata/songs.csv",
    "tracks": "musicoset_metadata/tracks.csv",
    "acoustic_features": "musicoset_songfeatures/acoustic_features.csv",
}
#: Optional: MusicOSet's ``albums.csv`` (names and cover URLs); absent from the shared copy.
ALBUMS_TABLE = "musicoset_metadata/albums.csv"
GENRE_MAP = Path(__file__).resolve().parent / "genre_map.csv"
SPOTIFY_ID = re.compile(r"^[0-9A-Za-z]{22}$")


@dataclass
class TableRead:
    """One table read with repairs: the rows kept, what was repaired and what was dropped."""

    frame: pd.DataFrame
    repaired: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)


def _unquote(cell: str) -> tuple[str, bool]:
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        return cell[1:-1].replace('""', '"'), True
    return cell, False


def read_tsv_repairing(path: str | Path) -> TableRead:
    """Read an unquoted TSV, joining rows broken over lines and unquoting wholly quoted cells.

    A physical line with too few fields is joined to the following line(s) (the break becomes
    a space) when that gives exactly the header's field count; otherwise those lines are
    dropped. Lines with too many fields are dropped. Each repair and drop is recorded with its
    file and line. Every column is a string.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MusicOSet table not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
    n = len(header)
    rows: list[list[str]] = []
    repaired: list[dict] = []
    dropped: list[dict] = []
    index = 1
    while index < len(lines):
        start = index
        fields = lines[index].rstrip("\r").split("\t")
        index += 1
        if len(fields) == 1 and not fields[0].strip():
            continue
        while len(fields) < n and index < len(lines) and lines[index].strip():
            following = lines[index].rstrip("\r").split("\t")
            fields = fields[:-1] + [f"{fields[-1]} {following[0]}"] + following[1:]
            index += 1
        where = f"{path.name}:{start + 1}"
        if len(fields) != n:
            dropped.append({"where": where, "item_id": fields[0][:40],
                            "reason": f"malformed row: {len(fields)} fields, expected {n}"})
            continue
        if index - start > 1:
            repaired.append({"where": where, "item_id": fields[0], "reason": f"row broken over {index - start} lines, joined"})
        unquoted = [_unquote(cell) for cell in fields]
        if any(changed for _, changed in unquoted):
            repaired.append({"where": where, "item_id": fields[0], "reason": "quoted cell unquoted"})
        rows.append([cell for cell, _ in unquoted])
    return TableRead(pd.DataFrame(rows, columns=header), repaired, dropped)


def load_musicoset_tables(root: str | Path, names: list[str] | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Read MusicOSet tables under ``root`` (the folder holding ``musicoset_metadata/``).

    Returns ``({name: frame}, problems)``: problems lists dropped rows (``malformed row``) and
    repaired ones (``repaired: …``), each with file and line.
    """
    root = Path(root)
    tables: dict[str, pd.DataFrame] = {}
    problems: list[dict] = []
    for name in names or list(TABLES):
        read = read_tsv_repairing(root / TABLES[name])
        tables[name] = read.frame
        problems += read.dropped + [{**r, "reason": f"repaired: {r['reason']}"} for r in read.repaired]
    return tables, problems_frame(problems)


def load_genre_map(path: str | Path = GENRE_MAP) -> dict[str, str]:
    """``fine Spotify genre → broad genre`` from a two-column CSV (``genre,broad_genre``)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns) != ["genre", "broad_genre"]:
        raise ValueError(f"{path} must have columns genre,broad_genre; has {list(table.columns)}")
    table["genre"] = table["genre"].str.strip().str.lower()
    repeated = table["genre"][table["genre"].duplicated()]
    if len(repeated):
        raise ValueError(f"{path} maps these genres twice: {sorted(set(repeated))[:10]}")
    return dict(zip(table["genre"], table["broad_genre"].str.strip().str.lower()))


def parse_genre_list(cell: str) -> list[str]:
    """``"['dance pop', 'pop']"`` → ``['dance pop', 'pop']``; raises ``ValueError`` when it is not a list."""
    value = ast.literal_eval(cell.strip()) if cell.strip() else []
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise ValueError(f"not a list of genre names: {cell[:80]!r}")
    return [g.strip().lower() for g in value]


def artist_votes(genres: list[str], genre_map: dict[str, str]) -> Counter:
    """One artist's vote of total weight 1, shared equally among its mapped fine genres' broad classes."""
    broad = [genre_map[g] for g in genres if g in genre_map]
    return Counter({label: count / len(broad) for label, count in Counter(broad).items()}) if broad else Counter()


def label_album(votes: list[Counter], first_main_genre: str | None) -> tuple[str, float, str]:
    """The album's broad genre from its artists' votes → ``(label, share, note)``.

    Rule: add the artists' votes (each artist weighs 1, split over its mapped genres); the class
    with the most votes wins and ``share`` is its fraction of all votes. A tie is broken by the
    first artist's ``main_genre`` when that maps to one of the tied classes; otherwise the album
    has no label (``note`` says why), as it does when none of its artists' genres is mapped.
    """
    total: Counter = Counter()
    for vote in votes:
        total.update(vote)
    if not total:
        return "", 0.0, "no mapped genre"
    weight = sum(total.values())
    best = max(total.values())
    tied = sorted(label for label, value in total.items() if abs(value - best) < 1e-9)
    if len(tied) == 1:
        return tied[0], best / weight, ""
    if first_main_genre in tied:
        return first_main_genre, best / weight, f"tie {'/'.join(tied)} broken by main_genre"
    return "", best / weight, f"tie between {'/'.join(tied)}"


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
    genre_map = load_genre_map() if genre_map is None else genre_map
    tables, problems = load_musicoset_tables(root, ["artists", "releases", "songs", "tracks"])
    problem_records = problems.to_dict(orient="records")
    artists = tables["artists"].set_index("artist_id", drop=False)

    genre_lists: dict[str, list[str]] = {}
    for artist_id, cell in zip(artists["artist_id"], artists["genres"]):
        try:
            genre_lists[artist_id] = parse_genre_list(cell)
        except (ValueError, SyntaxError) as error:
            genre_lists[artist_id] = []
            problem_records.append({"where": "artists.csv", "item_id": artist_id, "reason": f"genres unreadable: {error}"})
    main_genre = {a: genre_map.get(g.strip().lower()) for a, g in zip(artists["artist_id"], artists["main_genre"])}

    releases = tables["releases"]
    bad_ids = ~releases["album_id"].str.match(SPOTIFY_ID) | ~releases["artist_id"].str.match(SPOTIFY_ID)
    for _, row in releases[bad_ids].iterrows():
        problem_records.append({"where": "releases.csv", "item_id": row["album_id"], "reason": "malformed Spotify id"})
    releases = releases[~bad_ids]

    best_song = _most_popular_song_per_album(tables["tracks"], tables["songs"])
    cover_urls = _cover_urls(root)
    rows, unlabelled = [], []
    for album_id, album_artists in releases.groupby("album_id", sort=False)["artist_id"]:
        known = [a for a in album_artists if a in artists.index]
        if not known:
            unlabelled.append({"album_id": album_id, "reason": "artist not in artists.csv"})
            continue
        votes = [artist_votes(genre_lists[a], genre_map) for a in known]
        label, share, note = label_album(votes, main_genre.get(known[0]))
        if not label:
            unlabelled.append({"album_id": album_id, "reason": note})
            continue
        song = best_song.get(album_id, {})
        rows.append({"item_id": f"musicoset:{album_id}", "label": label, "group": known[0], "source": "musicoset",
                     "album_id": album_id, "artist_ids": "|".join(known),
                     "artist_names": "|".join(artists.loc[known, "name"]), "cover_url": cover_urls.get(album_id, ""),
                     "label_share": round(share, 4), "label_note": note,
                     "track_id": song.get("song_id", ""), "track_title": song.get("song_name", "")})
    items = finish_table(pd.DataFrame(rows))
    return MusicosetBuild(items, problems_frame(problem_records), _unmapped(genre_lists, genre_map, releases),
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
