"""Covers tables with the ``covers.csv`` schema → item table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.items import (LoadResult, connected_groups, file_digest, finish_table, input_file_problem, problems_frame,
                        read_delimited)

#: Largest cover file read (bytes); a cover is a few hundred kilobytes, a print-size scan tens of megabytes.
MAX_COVER_BYTES = 64 * 1024 * 1024

REQUIRED_COLUMNS = ["path", "genre"]
#: Columns whose shared values tie covers together (same image, same release, same artist).
GROUP_KEYS = ["md5", "release_id", "album_id", "artist_id"]


def resolve_base_dir(csv_path: Path, relative_paths: list[str]) -> Path:
    """Pick the folder the relative ``path`` column is relative to.

    The schema says the CSV's own folder; the shared ``covers.csv`` was written relative to
    the folder above it (its paths start with ``covers/``). Whichever of the two resolves more
    of the paths wins, so both layouts load; ``base_dir=`` overrides the choice.
    """
    sample = [p for p in relative_paths if p and not Path(p).is_absolute()][:200]
    here, parent = csv_path.parent, csv_path.parent.parent
    hits_here = sum((here / p).exists() for p in sample)
    hits_parent = sum((parent / p).exists() for p in sample)
    return parent if hits_parent > hits_here else here


def load_covers_table(
    csv_path: str | Path,
    base_dir: str | Path | None = None,
    compute_missing_md5: bool = True,
    sources: list[str] | None = None,
) -> LoadResult:
    """Load a covers CSV (columns ``path, genre`` required; ``source, release_id, album_id,
    artist_id, artist_name, album_name, release_date, md5`` optional).

    ``label`` is the raw genre (aliasing happens with the label set), ``group`` ties rows that
    share an md5, release, album or artist. Rows with a wrong field count, an empty path or a
    missing file are left out and listed in ``problems``. Unreadable image *content* is found
    later, when the image is decoded, and recorded per item there. ``sources`` keeps only rows
    of those sources (e.g. ``["discogs"]``, to keep the source confound out of a label set).
    """
    csv_path = Path(csv_path).resolve()
    header, rows, problems = read_delimited(csv_path)
    missing_columns = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing_columns:
        raise ValueError(
            f"{csv_path} lacks required column(s) {missing_columns}; header is {header}"
        )
    frame = pd.DataFrame(rows, columns=header).fillna("")
    frame["_line"] = range(2, len(frame) + 2)
    if sources is not None:
        if "source" not in frame.columns:
            raise ValueError(f"sources={list(sources)} given but {csv_path} has no source column")
        unknown = sorted(set(sources) - set(frame["source"]))
        if unknown:
            raise ValueError(f"{csv_path} has no rows of source(s) {unknown}; it has {sorted(set(frame['source']))}")
        frame = frame[frame["source"].isin(list(sources))]
    base = Path(base_dir).resolve() if base_dir else resolve_base_dir(csv_path, frame["path"].tolist())

    frame["cover_path"] = ""
    keep = []
    for index, row in frame.iterrows():
        where = f"{csv_path.name}:{row['_line']}"
        if not row["path"].strip():
            problems.append({"where": where, "item_id": "", "reason": "empty path"})
            continue
        path = Path(row["path"])
        full = path if path.is_absolute() else base / path
        problem = input_file_problem(full, MAX_COVER_BYTES)
        if problem:
            problems.append({"where": where, "item_id": row["path"], "reason": problem})
            continue
        frame.at[index, "cover_path"] = str(full)
        keep.append(index)
    frame = frame.loc[keep].copy()

    frame["label"] = frame["genre"].str.strip().str.lower()
    if "source" not in frame.columns:
        frame["source"] = csv_path.stem
    frame["source"] = frame["source"].replace("", csv_path.stem)
    # The path minus its extension is unique per row even when a release is filed twice; a file listed
    # twice (or two files differing only in their extension) keeps its first row.
    frame["item_id"] = [str(Path(p).with_suffix("")) for p in frame["path"]]
    repeated = frame["item_id"].duplicated()
    for _, row in frame[repeated].iterrows():
        problems.append({"where": f"{csv_path.name}:{row['_line']}", "item_id": row["item_id"],
                         "reason": "listed twice (the first row is kept)"})
    frame = frame[~repeated]
    if "md5" not in frame.columns:
        frame["md5"] = ""
    if compute_missing_md5:
        empty = frame["md5"] == ""
        frame.loc[empty, "md5"] = [file_digest(p) for p in frame.loc[empty, "cover_path"]]
    keys = frame[[c for c in GROUP_KEYS if c in frame.columns]]
    frame["group"] = connected_groups(keys).values
    frame["audio_path"] = ""
    frame = frame.drop(columns=["_line", "path", "genre"])
    return LoadResult(finish_table(frame), problems_frame(problems))
