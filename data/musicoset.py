"""MusicOSet's tab-separated tables, and the rule that labels a release by its artists' genres.

The tables are tab-separated and unquoted (titles and names contain quote characters), so
quoting is off and each row is checked by hand: a row broken over several lines is joined, a
cell wrapped whole in double quotes (an export that quoted it) is unquoted, and a row whose
field count still differs from the header's is dropped. Every repair and drop is counted.

Releases are labelled from their artists' Spotify genres through a mapping table kept as data
(``data/genre_map.csv``, ``genre,broad_genre``); see :func:`label_album` for the rule and
:class:`ArtistGenres` for applying it (the album builder in :mod:`acquire.musicoset`, paired
catalogues labelled by rule in :mod:`data.paired`).
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data.items import problems_frame

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


class ArtistGenres:
    """Artists' Spotify genres (``artists.csv``) and the rule that labels a release by its artists.

    The one implementation of MusicOSet's album rule (:func:`label_album`): the album builder and
    a paired catalogue labelled by rule both call :meth:`label`, so the same artists get the same label.
    """

    def __init__(self, artists: pd.DataFrame, genre_map: dict[str, str] | None = None) -> None:
        self.genre_map = load_genre_map() if genre_map is None else genre_map
        self.artists = artists.set_index("artist_id", drop=False)
        self.problems: list[dict] = []
        self.genre_lists: dict[str, list[str]] = {}
        for artist_id, cell in zip(self.artists["artist_id"], self.artists["genres"]):
            try:
                self.genre_lists[artist_id] = parse_genre_list(cell)
            except (ValueError, SyntaxError) as error:
                self.genre_lists[artist_id] = []
                self.problems.append({"where": "artists.csv", "item_id": artist_id,
                                      "reason": f"genres unreadable: {error}"})
        self.main_genre = {a: self.genre_map.get(g.strip().lower())
                           for a, g in zip(self.artists["artist_id"], self.artists["main_genre"])}

    @classmethod
    def from_root(cls, root: str | Path, genre_map: dict[str, str] | None = None) -> "ArtistGenres":
        """From MusicOSet's ``artists.csv`` under ``root`` (the folder holding ``musicoset_metadata/``)."""
        tables, problems = load_musicoset_tables(root, ["artists"])
        genres = cls(tables["artists"], genre_map)
        genres.problems = problems.to_dict(orient="records") + genres.problems
        return genres

    def known(self, artist_ids: list[str]) -> list[str]:
        """The ids among ``artist_ids`` that ``artists.csv`` lists, in order."""
        return [a for a in artist_ids if a in self.artists.index]

    def label(self, artist_ids: list[str]) -> tuple[str, float, str]:
        """``(label, share, note)`` of a release by these artists (first artist first); ``""`` when the rule
        gives none, ``note`` saying why."""
        known = self.known(artist_ids)
        if not known:
            return "", 0.0, "artist not in artists.csv"
        votes = [artist_votes(self.genre_lists[a], self.genre_map) for a in known]
        return label_album(votes, self.main_genre.get(known[0]))

