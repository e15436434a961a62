"""The common item table every collection loads into, and the record of what failed to load."""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

#: Columns every item table has, in this order; collection-specific columns follow.
ITEM_COLUMNS = ["item_id", "label", "group", "source", "cover_path", "audio_path"]


@dataclass
class LoadResult:
    """An item table and the per-row problems met while building it.

    ``problems`` has columns ``where`` (file and line, or item id), ``item_id`` (may be empty)
    and ``reason``. Rows with a problem that makes them unusable are not in ``items``.
    """

    items: pd.DataFrame
    problems: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["where", "item_id", "reason"])
    )

    def summary(self) -> str:
        counts = self.problems["reason"].str.split(":").str[0].value_counts()
        listed = ", ".join(f"{n} {reason}" for reason, n in counts.items())
        return f"{len(self.items)} items" + (f"; skipped/flagged: {listed}" if listed else "")


def problems_frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=["where", "item_id", "reason"])


def finish_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Order the common columns first, fill absent ones with empty strings, check ids are unique."""
    for column in ITEM_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    duplicated = frame["item_id"][frame["item_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"item_id must be unique; repeated: {sorted(set(duplicated))[:5]}")
    extra = [c for c in frame.columns if c not in ITEM_COLUMNS]
    return frame[ITEM_COLUMNS + extra].reset_index(drop=True)


def read_delimited(
    path: Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
) -> tuple[list[str], list[list[str]], list[dict]]:
    """Read a delimited text file, keeping rows whose field count matches the header.

    Returns ``(header, rows, problems)``; each problem names the file and line of a row that
    was dropped because its column count (or quoting) is off.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Table not found: {path}")
    problems: list[dict] = []
    rows: list[list[str]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty: expected a header row") from None
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                problems.append({
                    "where": f"{path.name}:{reader.line_num}",
                    "item_id": "",
                    "reason": f"malformed row: {len(row)} fields, expected {len(header)}",
                })
                continue
            rows.append(row)
    return header, rows, problems


def file_digest(path: str | Path, algorithm: str = "md5", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def connected_groups(keys: pd.DataFrame) -> pd.Series:
    """Group rows that share any non-empty key (union-find over the columns of ``keys``).

    Items sharing an md5, a release or an artist end up in one group, transitively, so a
    split by group never puts related items on both sides. Returns a group name per row.
    """
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in keys.columns:
        first_seen: dict[str, int] = {}
        for row, value in enumerate(keys[column].astype(str)):
            if not value or value == "nan":
                continue
            key = f"{column}={value}"
            if key in first_seen:
                a, b = find(row), find(first_seen[key])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                first_seen[key] = row
    roots = [find(i) for i in range(len(keys))]
    return pd.Series([f"g{root:06d}" for root in roots], index=keys.index)
