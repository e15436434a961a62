"""A paired catalogue: one table of tracks, each with its own cover and its own audio, as one item table.

This is the project's main input: both branches train and are compared on the same tracks, split
once (group-aware over album and artist), and fusion pairs them by track id (``pairing: real``).

Columns (CSV, UTF-8, or Parquet):
- ``track_id`` (or ``item_id``): the item id; a row without one, or repeating an earlier one, is
  left out and listed;
- the genre: ``genre`` (or another ``label_column``), or labelled by MusicOSet's album rule from
  the artists' Spotify genres (``label_rule=musicoset``, reading ``artist_ids``); a row left
  without a label is listed, never guessed;
- ``cover_path`` / ``audio_path``: files, relative to the catalogue's folder or absolute (URL
  columns are fetched to local files before loading, by :mod:`acquire.catalogue`, which records
  a failed download in ``cover_error`` / ``audio_error``);
- grouping columns (default ``album_id`` and ``artist_ids``; several ids in one cell separated
  by ``;`` or ``|``) and the cover file's md5: tracks sharing any of them stay on one side of every
  split;
- anything else (e.g. Spotify's acoustic descriptors) is kept, for a tabular audio model.
A missing modality is not a problem here: the branch that needs it lists the row.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from data.items import (LoadResult, connected_groups, file_digest, finish_table, is_parquet, problems_frame,
                        read_delimited, read_parquet_text)
from data.labels import normalise_genre
from data.musicoset import ArtistGenres, load_genre_map

ID_COLUMNS = ("track_id", "item_id")
LIST_SEPARATOR = re.compile(r"\s*[;|]\s*")
LABEL_RULES = ("musicoset",)


def split_ids(cell: object) -> list[str]:
    """``"a;b"`` or ``"a|b"`` → ``["a", "b"]`` (empty parts dropped)."""
    return [part for part in LIST_SEPARATOR.split(str(cell or "").strip()) if part]


def read_catalogue(path: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """Every well-formed row of a CSV or Parquet catalogue as strings, and the problems of the others."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalogue not found: {path}")
    if is_parquet(path):
        _, frame, problems = read_parquet_text(path)
        return frame, problems
    header, rows, problems = read_delimited(path)
    return pd.DataFrame(rows, columns=header), problems


def load_paired_catalogue(path: str | Path, label_column: str = "genre", label_rule: str | None = None,
                          musicoset_root: str | Path | None = None, genre_map_path: str | Path | None = None,
                          group_columns: Sequence[str] = ("album_id", "artist_ids"),
                          source: str | None = None, id_column: str | None = None,
                          group_by_cover: bool = True) -> LoadResult:
    """Load a paired catalogue (see the module's docstring) into the item table.

    ``label`` is the raw genre (aliasing happens with the label set); ``group`` ties tracks that
    share an album or an artist; ``cover_path``/``audio_path`` are absolute or empty. With
    ``label_rule="musicoset"`` the labels come from ``musicoset_root``'s ``artists.csv`` through
    ``genre_map_path`` (default: the project's ``genre_map.csv``), and ``label_share``/``label_note``
    say how clear each vote was. ``id_column`` defaults to the first of ``track_id``, ``item_id``
    that holds any value (a crawler's album table has an empty ``track_id`` beside its ``item_id``).
    ``group_by_cover``: tracks whose cover files are byte-identical (``md5``, given or computed) share a
    group. Genre cells are normalised (:func:`data.labels.normalise_genre`) before anything compares them.
    """
    path = Path(path).resolve()
    frame, problems = read_catalogue(path)
    frame = frame.fillna("").astype(str)
    frame["_row"] = range(1, len(frame) + 1)  # among the well-formed rows (malformed ones are listed apart)
    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in frame.columns and (frame[c].str.strip() != "").any()), None)
    if id_column is None or id_column not in frame.columns:
        raise ValueError(f"{path} has no {' or '.join(ID_COLUMNS)} column with ids; its columns are "
                         f"{list(frame.columns)}")
    frame["item_id"] = frame[id_column].str.strip()

    genres = frame[label_column].map(normalise_genre) if label_column in frame.columns else None
    keep = []
    first_genre: dict[str, str] = {}
    for index, row in frame.iterrows():
        where = f"{path.name} row {row['_row']}"
        if not row["item_id"]:
            problems.append({"where": where, "item_id": "", "reason": f"no {id_column}"})
        elif row["item_id"] in first_genre:
            earlier = first_genre[row["item_id"]]
            disagree = genres is not None and genres[index] != earlier
            problems.append({"where": where, "item_id": row["item_id"],
                             "reason": f"{id_column} repeated with another genre ({genres[index]!r}; the first row, "
                                       f"kept, says {earlier!r})" if disagree else
                                       f"{id_column} repeated (the first row is kept)"})
        else:
            first_genre[row["item_id"]] = genres[index] if genres is not None else ""
            keep.append(index)
    frame = frame.loc[keep].copy()

    if label_rule is not None:
        frame = _label_by_rule(frame, label_rule, musicoset_root, genre_map_path, path)
    elif genres is not None:
        frame["label"] = genres[frame.index]
    else:
        raise ValueError(f"{path} has no {label_column!r} column; give label_column=<the genre column> or "
                         f"label_rule=musicoset (labels from the artists' genres, needs artist_ids)")
    unlabelled = frame["label"] == ""
    for _, row in frame[unlabelled].iterrows():
        reason = row.get("label_note") or f"missing {label_column}"
        problems.append({"where": f"{path.name} row {row['_row']}", "item_id": row["item_id"],
                         "reason": f"no label: {reason}"})
    frame = frame[~unlabelled].copy()

    base = path.parent
    for column in ("cover_path", "audio_path"):
        values = frame[column] if column in frame.columns else pd.Series("", index=frame.index)
        frame[column] = [str(base / p) if p.strip() and not Path(p.strip()).is_absolute() else p.strip()
                         for p in values]
    if group_by_cover:
        # The same image under two tracks (an album's tracks, a re-issue): one group, as in the covers
        # table, and an md5 filed under two genres is found by the label set (ambiguous_on: md5).
        given = frame["md5"].str.strip() if "md5" in frame.columns else pd.Series("", index=frame.index)
        frame["md5"] = [md5 or (file_digest(cover) if cover and Path(cover).is_file() else "")
                        for md5, cover in zip(given, frame["cover_path"])]
    keys = pd.DataFrame({c: frame[c].map(split_ids) for c in [*group_columns, *(["md5"] if group_by_cover else [])]
                         if c in frame.columns}, index=frame.index)
    frame["group"] = connected_groups(keys).values if len(keys.columns) else frame["item_id"].to_numpy()
    frame["source"] = source or path.stem
    frame = frame.drop(columns=["_row"])
    return LoadResult(finish_table(frame), problems_frame(problems))


def _label_by_rule(frame: pd.DataFrame, rule: str, musicoset_root: str | Path | None,
                   genre_map_path: str | Path | None, path: Path) -> pd.DataFrame:
    if rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {LABEL_RULES}, got {rule!r}")
    if "artist_ids" not in frame.columns:
        raise ValueError(f"{path}: label_rule={rule} labels tracks by their artists, but there is no artist_ids column")
    if musicoset_root is None:
        raise ValueError("label_rule=musicoset needs musicoset_root (the folder holding musicoset_metadata/)")
    genre_map = load_genre_map(genre_map_path) if genre_map_path else None
    artists = ArtistGenres.from_root(musicoset_root, genre_map)
    labelled = [artists.label(split_ids(cell)) for cell in frame["artist_ids"]]
    return frame.assign(label=[label for label, _, _ in labelled],
                        label_share=[round(share, 4) for _, share, _ in labelled],
                        label_note=[note for _, _, note in labelled])
