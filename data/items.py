"""The common item table every collection loads into, and the record of what failed to load."""
from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

#: Columns every item table has, in this order; collection-specific columns follow.
ITEM_COLUMNS = ["item_id", "label", "group", "source", "cover_path", "audio_path"]
#: Table files with these suffixes are read as Parquet; any other as CSV.
PARQUET_SUFFIXES = (".parquet", ".pq")
#: How several ids share one cell (``artist_ids``): what a Parquet list cell is written as.
LIST_CELL_SEPARATOR = ";"


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


#: The error of a record with no cells but blanks.
EMPTY_ROW = "empty row"


def delimited_records(path: str | os.PathLike, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
                      ) -> tuple[list[str], list[tuple[int, list[str], str]]]:
    """The header of a delimited UTF-8 text file (a spreadsheet's byte-order mark is fine) and every record
    after it, as ``(line number, fields, error)``: ``error`` is empty for a record with the header's field
    count, else :data:`EMPTY_ROW` or ``"malformed row: …"``.

    The one reader of delimited tables: item tables drop the records in error
    (:func:`read_delimited`), a track table to score keeps each as a row of its own. A missing or
    empty file, a file in another encoding, or a header naming a column twice is an error saying so.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Table not found: {path}")
    records: list[tuple[int, list[str], str]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise ValueError(f"{path} is empty: expected a header row")
            check_header(header, path)
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    error = EMPTY_ROW
                elif len(record) != len(header):
                    error = f"malformed row: {len(record)} fields, expected {len(header)}"
                else:
                    error = ""
                records.append((reader.line_num, record, error))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): save it as UTF-8 "
                         "(\"CSV UTF-8\" in a spreadsheet) and try again") from None
    return header, records


def read_delimited(
    path: Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
) -> tuple[list[str], list[list[str]], list[dict]]:
    """Read a delimited table (:func:`delimited_records`), keeping rows whose field count matches the header.

    Returns ``(header, rows, problems)``; empty records are skipped, and each problem names the file
    and line of a row that was dropped because its column count (or quoting) is off.
    """
    header, records = delimited_records(path, delimiter, quoting)
    rows = [fields for _, fields, error in records if not error]
    problems = [{"where": f"{Path(path).name}:{line}", "item_id": "", "reason": error}
                for line, _, error in records if error and error != EMPTY_ROW]
    return header, rows, problems


def is_parquet(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def read_parquet_text(path: Path) -> tuple[list[str], pd.DataFrame, list[dict]]:
    """Every cell of a Parquet table as text, as a CSV would give it: ``(header, frame, problems)``.

    Numbers read as Arrow writes them (an id stored as the float 123.0 reads "123", as in a CSV);
    a null cell reads "". A list cell (``artist_ids`` stored as ``list<string>``, the natural Parquet
    form) reads as its elements joined by ``;``, the separator the loaders split ids on, so tracks
    sharing an artist still share a group; a null element is left out (the others kept) and listed
    in ``problems``. A file Arrow cannot read, or a column that has no text form (a struct, a list
    of lists, bytes that are not UTF-8), is a :class:`ValueError` naming it.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path} is not a readable Parquet file: {error}") from None
    header = [str(name) for name in table.column_names]
    check_header(header, path)
    columns, problems = {}, []
    for name, column in zip(header, table.columns):
        try:
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                cells = column.cast(pa.list_(pa.string())).to_pylist()
                columns[name] = [LIST_CELL_SEPARATOR.join(v for v in cell if v is not None) if cell else ""
                                 for cell in cells]
                problems += [{"where": f"{Path(path).name} row {row}", "item_id": "",
                              "reason": f"{name}: a null inside the list {cell} (the other values kept)"}
                             for row, cell in enumerate(cells, start=1) if cell and None in cell]
                continue
            text = column.cast(pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as error:
            raise ValueError(f"{path}: column {name!r} of type {column.type} has no text form ({error}); "
                             "store it as text, numbers or a list of them") from None
        columns[name] = pc.fill_null(text, "").to_pylist()
    return header, pd.DataFrame(columns, columns=header), problems


def check_header(header: list[str], path: str | os.PathLike) -> None:
    """A table's header must name each column once: a repeated name would make its cells ambiguous."""
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: the header names column(s) {repeated} more than once; rename or drop the copies")


def file_digest(path: str | Path, algorithm: str = "md5", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def connected_groups(keys: pd.DataFrame) -> pd.Series:
    """Group rows that share any non-empty key (union-find over the columns of ``keys``).

    Items sharing an md5, a release, an album or an artist end up in one group, transitively,
    so a split by group never puts related items on both sides. A cell may hold a list (the
    artists of a track): each of its values ties the row. Returns a group name per row.
    """
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in keys.columns:
        first_seen: dict[str, int] = {}
        for row, cell in enumerate(keys[column]):
            for value in (cell if isinstance(cell, (list, tuple)) else [cell]):
                value = "" if value is None else str(value).strip()
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


def missing_modality(items: pd.DataFrame, path_column: str, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``items`` into those with a file in ``path_column`` and the problems of those without.

    A row's reason is its ``<modality>_error`` column when the catalogue (or the fetch that filled
    it) recorded one, else "no <what> in the table".
    """
    has = items[path_column].fillna("").astype(str) != ""
    error_column = path_column.replace("_path", "_error")
    reasons = items.loc[~has, error_column] if error_column in items.columns else pd.Series("", index=items.index[~has])
    problems = problems_frame([{"where": error_column if reason else path_column, "item_id": item_id,
                                "reason": reason or f"no {what} in the table"}
                               for item_id, reason in zip(items.loc[~has, "item_id"], reasons.fillna(""))])
    return items[has], problems


def input_file_problem(path: str | os.PathLike, max_bytes: int) -> str | None:
    """Why ``path`` cannot be read as an input file, or ``None`` when it can.

    An input must be a regular file (not a folder, a device such as ``/dev/zero`` or a pipe, which
    could be read forever), not empty and at most ``max_bytes`` long; a path the file system
    refuses (too long, not a folder on the way, a NUL character) is a reason, never an exception.
    """
    text = os.fspath(path)
    try:
        info = os.stat(text)
    except FileNotFoundError:
        return f"missing file: {text}"
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            return f"path too long for the file system ({len(text)} characters): {text[:80]}…"
        if error.errno == errno.ENOTDIR:
            return f"missing file: {text} (a folder on its path is a file)"
        return f"unreadable path: {text[:200]}: {error.strerror}"
    except ValueError:  # raised before the file system is asked: no file name can hold a NUL character
        return f"unreadable path: {text[:200]!r} holds a NUL character"
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file: {text}"
    if info.st_size == 0:
        return f"empty file: {text}"
    if info.st_size > max_bytes:
        return f"too large: {Path(text).name} is {info.st_size:,} bytes (limit {max_bytes:,})"
    return None
