"""MusicOSet's tab-separated tables, read with per-row checks (the acquisition issue joins them)."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from data.items import problems_frame, read_delimited

TABLES = {
    "artists": "musicoset_metadata/artists.csv",
    "releases": "musicoset_metadata/releases.csv",
    "songs": "musicoset_metadata/songs.csv",
    "tracks": "musicoset_metadata/tracks.csv",
    "acoustic_features": "musicoset_songfeatures/acoustic_features.csv",
}


def load_musicoset_tables(root: str | Path, names: list[str] | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Read MusicOSet tables under ``root`` (the folder holding ``musicoset_metadata/``).

    Cells are tab-separated and not quoted (song titles contain quote characters), so quoting
    is off. Rows whose field count differs from the header are dropped and returned as
    problems. Returns ``({name: frame}, problems)``; every column is a string.
    """
    root = Path(root)
    tables: dict[str, pd.DataFrame] = {}
    problems: list[dict] = []
    for name in names or list(TABLES):
        header, rows, table_problems = read_delimited(root / TABLES[name], delimiter="\t", quoting=csv.QUOTE_NONE)
        tables[name] = pd.DataFrame(rows, columns=header)
        problems += table_problems
    return tables, problems_frame(problems)
