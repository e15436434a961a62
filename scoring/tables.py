"""Track tables in, score tables out: CSV or Parquet, one output row per input row, resumable.

A track table has any of ``track_id``/``item_id``, ``cover_path``, ``cover_url``, ``audio_path``,
``audio_url`` (relative paths are relative to the table's folder). Every record becomes one row
numbered ``row`` (0-based), malformed ones included, so each gets its output row. A scores
table is written as batches finish, so a run stopped at any point resumes after the rows already
written: a CSV grows line by line; a Parquet output is built from atomically written parts
(``<output>.parts/``) and put together, in row order, when every row is done. One job writes an
output at a time (``<output>.lock``): a second one started on it is refused until the first ends.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from data.items import EMPTY_ROW, check_header, delimited_records, is_parquet, read_parquet_text
from data.paired import ID_COLUMNS
from engine.io import atomic_path, write_json

SOURCE_COLUMNS = ("cover_path", "cover_url", "audio_path", "audio_url")
#: What the scorer adds to every record: its number and why it cannot be scored. A track table's own
#: columns of these names (a scores table scored again) are left out, as any column the scorer does not read.
ROW_COLUMNS = ("row", "row_error")

log = logging.getLogger(__name__)


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 ≤ i < n``."""
    try:
        index, count = (int(part) for part in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return index, count


def _csv_records(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Every record of a CSV track table as a row of text cells (stripped) with its ``row_error``."""
    header, records = delimited_records(path)
    read = [(i, name) for i, name in enumerate(header) if name not in ROW_COLUMNS]
    rows = []
    for _, fields, error in records:
        row = {name: "" if error else fields[i].strip() for i, name in read}
        row["row_error"] = error
        rows.append(row)
    return header, rows


def _parquet_table(path: Path) -> tuple[list[str], pd.DataFrame]:
    header, frame, _ = read_parquet_text(path)  # a null inside a list cell: no column scoring reads
    frame = frame.drop(columns=[name for name in ROW_COLUMNS if name in header])
    frame = frame.apply(lambda column: column.str.strip())  # as the CSV reader strips its cells
    blank = (frame == "").all(axis=1) if header else pd.Series(True, index=frame.index)
    frame["row_error"] = np.where(blank, EMPTY_ROW, "")
    return header, frame


def read_track_table(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Every record of the CSV or Parquet table as one row (``row`` = 0-based record number), malformed
    ones included: a CSV record whose field count differs from the header's, or an empty record,
    keeps its place with ``row_error`` set. Returns ``(table, header)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"track table not found: {path}")
    if is_parquet(path):
        header, table = _parquet_table(path)
    else:
        header, records = _csv_records(path)
        table = pd.DataFrame(records, columns=[name for name in header if name not in ROW_COLUMNS] + ["row_error"])
        table = table.fillna("")
    check_header(header, path)
    if own := [name for name in ROW_COLUMNS if name in header]:
        log.warning("%s: its own column(s) %s are left out: the scorer numbers the rows and writes why one "
                    "fails itself", path.name, own)
    known = set(ID_COLUMNS) | set(SOURCE_COLUMNS)
    if not known & set(header):
        raise ValueError(f"{path} has none of the columns {sorted(known)}; header is {header}")
    table.insert(0, "row", np.arange(len(table)))
    for column in SOURCE_COLUMNS + ID_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    _resolve_relative(table, path.parent)
    return table, header


def _resolve_relative(table: pd.DataFrame, base: Path) -> None:
    for column in ("cover_path", "audio_path"):
        table[column] = [str(base / p) if p and not Path(p).is_absolute() else p for p in table[column]]


def resolve_ids(table: pd.DataFrame, catalogue: str | Path | None) -> pd.DataFrame:
    """Fill in the files of rows that give only an id, from a catalogue item table (``item_id`` or
    ``track_id``, ``cover_path``, ``audio_path``; paths relative to it). A row with no id and no
    source, or an id the catalogue lacks, gets its ``row_error``."""
    known: dict[str, tuple[str, str]] = {}
    if catalogue:
        items, header = read_track_table(catalogue)
        if not set(ID_COLUMNS) & set(header):
            raise ValueError(f"catalogue {catalogue} has no {' or '.join(ID_COLUMNS)} column to look ids up in; "
                             f"its columns are {header}")
        for key in ID_COLUMNS:
            for ident, cover, audio in zip(items[key], items["cover_path"], items["audio_path"]):
                if ident:
                    known.setdefault(ident, (cover, audio))
    table = table.copy()
    ids = table["track_id"].where(table["track_id"] != "", table["item_id"])
    no_source = (table[list(SOURCE_COLUMNS)] == "").all(axis=1) & (table["row_error"] == "")
    found = ids.map(known)
    table.loc[no_source & (ids == ""), "row_error"] = EMPTY_ROW
    unknown = no_source & (ids != "") & found.isna()
    suffix = "" if known else " (no catalogue given)"
    table.loc[unknown, "row_error"] = [f"unknown id {ident!r}{suffix}" for ident in ids[unknown]]
    resolved = no_source & found.notna()
    table.loc[resolved, "cover_path"] = [pair[0] for pair in found[resolved]]
    table.loc[resolved, "audio_path"] = [pair[1] for pair in found[resolved]]
    return table


class ScoresWriter:
    """Where a scoring run's output rows go, batch by batch; :func:`open_scores` picks the format.

    ``claim`` takes the output for this job; ``done_rows()`` are the rows a previous run of the same
    job already wrote; ``write`` adds a batch (in any row order) durably; ``finish`` leaves the output
    complete and in row order; ``release`` lets another job take the output.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.record_path = output.with_name(output.name + ".run.json")
        self.lock_path = output.with_name(output.name + ".lock")
        self._lock: IO[str] | None = None

    def claim(self, record: dict[str, Any]) -> set[int]:
        """Refuse an output another job is writing or wrote; record this job; return the rows already written."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            done = self.done_rows()
            previous = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}
            if done and previous and previous != record:
                raise ValueError(f"{self.output} was written by a different run ({previous}); "
                                 "give another output path or delete it")
            write_json(self.record_path, record)
        except BaseException:
            self.release()
            raise
        return done

    def _take_lock(self) -> None:
        # Two jobs appending to one output would write each row twice. An flock is dropped by the
        # system when its process ends, however it ends, so a killed job never leaves the output locked.
        while True:
            handle = self.lock_path.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise ValueError(f"{self.output} is being written by another scoring job ({holder}); "
                                 "wait for it to end or give another output") from None
            try:
                if os.stat(self.lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()  # the job that held it removed the file meanwhile: lock the new one
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Let another job write the output (when this job ends, finished or not); harmless twice."""
        if self._lock is not None:
            self.lock_path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def done_rows(self) -> set[int]:
        raise NotImplementedError

    def write(self, batch: pd.DataFrame) -> None:
        raise NotImplementedError

    def finish(self, columns: list[str]) -> None:
        raise NotImplementedError


class CsvScores(ScoresWriter):
    """A CSV that grows by one fsync'd write per batch; a half-written last line is cut on resume."""

    def done_rows(self) -> set[int]:
        if not self.output.is_file():
            return set()
        drop_partial_last_line(self.output)
        if not self.output.stat().st_size:
            return set()
        return set(pd.read_csv(self.output, usecols=["row"])["row"].astype(int))

    def write(self, batch: pd.DataFrame) -> None:
        header = not self.output.is_file() or not self.output.stat().st_size
        with self.output.open("a", newline="") as handle:
            handle.write(batch.to_csv(header=header, index=False))  # one write per batch
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self, columns: list[str]) -> None:
        if not self.output.is_file() or not self.output.stat().st_size:
            with atomic_path(self.output) as temporary:  # no rows: the header alone, as for any other run
                pd.DataFrame(columns=columns).to_csv(temporary, index=False)
            return
        rows = pd.read_csv(self.output, usecols=["row"])["row"].to_numpy()
        if np.any(np.diff(rows) < 0):  # batches finished out of order (parallel engines): put rows in order
            table = pd.read_csv(self.output, dtype=str, keep_default_na=False)
            with atomic_path(self.output) as temporary:
                table.iloc[np.argsort(rows, kind="stable")].to_csv(temporary, index=False)


class ParquetScores(ScoresWriter):
    """Atomically written parts in ``<output>.parts/``, put together in row order when the job is done."""

    @property
    def parts(self) -> Path:
        return self.output.with_name(self.output.name + ".parts")

    def done_rows(self) -> set[int]:
        import pyarrow.parquet as pq

        done: set[int] = set()
        if self.output.is_file():
            done |= set(pq.read_table(self.output, columns=["row"]).column("row").to_pylist())
        for part in sorted(self.parts.glob("part-*.parquet")):
            done |= set(pq.read_table(part, columns=["row"]).column("row").to_pylist())
        return done

    def write(self, batch: pd.DataFrame) -> None:
        if batch.empty:
            return
        with atomic_path(self.parts / f"part-{int(batch['row'].min()):012d}.parquet") as temporary:
            batch.to_parquet(temporary, index=False)

    def finish(self, columns: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(self.output)] if self.output.is_file() else []
        tables += [pq.read_table(part) for part in sorted(self.parts.glob("part-*.parquet"))]
        if not tables:
            empty = pd.DataFrame(columns=columns)
            tables = [pa.Table.from_pandas(empty, preserve_index=False)]
        whole = pa.concat_tables(tables, promote_options="permissive")
        whole = whole.sort_by("row")
        with atomic_path(self.output) as temporary:
            pq.write_table(whole, temporary)
        shutil.rmtree(self.parts, ignore_errors=True)


def open_scores(output: str | Path) -> ScoresWriter:
    """The writer for ``output``: Parquet for ``.parquet``/``.pq``, else CSV."""
    output = Path(output)
    return ParquetScores(output) if is_parquet(output) else CsvScores(output)


def drop_partial_last_line(path: Path) -> None:
    """A run killed while writing leaves half a line at the end: cut it, so that row is scored again."""
    content = path.read_bytes()
    if content and not content.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(content.rfind(b"\n") + 1)


def write_csv_copy(scores: str | Path, csv_path: str | Path) -> None:
    """A finished Parquet scores table also as CSV (what spreadsheet users open)."""
    with atomic_path(csv_path) as temporary:
        pd.read_parquet(scores).to_csv(temporary, index=False)
