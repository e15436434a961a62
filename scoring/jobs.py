"""A scoring job: a track table and a model folder → a scores table, one output row per input row.

The job is the same whatever runs it: the table read (CSV or Parquet), ids resolved through the
catalogue, this shard's rows, the rows a previous run already wrote left out; then batches go
through :func:`scoring.tracks.prepare_batch` and :func:`scoring.tracks.output_rows` and into the
output as each finishes. :func:`score_table` runs them here, one batch after another;
``engine=ray`` (:mod:`scoring.ray_engine`) runs the same two steps on a Ray cluster.
``shard=i/n`` scores rows ``r`` with ``r % n == i``, so that machines without a shared cluster
can split one catalogue.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from acquire.http import Downloader
from engine.inference import resolve_device
from engine.progress import progress_bar
from scoring.tables import ScoresWriter, open_scores, parse_shard, read_track_table, resolve_ids, write_csv_copy
from scoring.tracks import TrackScorer, load_track_scorer, output_columns, output_rows, prepare_batch, scoring_inputs

log = logging.getLogger(__name__)


@dataclass
class ScoringJob:
    """What is left to score: the model, this shard's rows not yet written, and where they go."""

    scorer: TrackScorer
    todo: pd.DataFrame
    rows_in_shard: int
    writer: ScoresWriter
    download_dir: Path
    shard: str

    def batches(self, batch_size: int) -> list[pd.DataFrame]:
        return [self.todo.iloc[first:first + batch_size] for first in range(0, len(self.todo), batch_size)]

    def finish(self, statuses: list[str], seconds: float, also_csv: bool = False) -> dict[str, Any]:
        """Put the output together and summarise: rows in the shard, written now, skipped as done, statuses."""
        self.writer.finish(output_columns(self.scorer))
        if also_csv and self.writer.output.suffix.lower() != ".csv":
            write_csv_copy(self.writer.output, self.writer.output.with_suffix(".csv"))
        if not self.rows_in_shard:
            log.warning("the track table has no rows to score in shard %s", self.shard)
        summary = {"rows_in_shard": self.rows_in_shard, "written_now": len(self.todo),
                   "already_done": self.rows_in_shard - len(self.todo),
                   "ok": sum(s == "ok" for s in statuses), "not_ok": sum(s != "ok" for s in statuses),
                   "seconds": round(seconds, 2),
                   "tracks_per_s": round(len(self.todo) / seconds, 2) if seconds and len(self.todo) else None,
                   "modalities": self.scorer.modalities, "output": str(self.writer.output)}
        log.info("scored %s", summary)
        return summary


def plan_job(input_table: str | Path, model_dir: str | Path, output: str | Path, shard: str = "0/1",
             catalogue: str | Path | None = None, download_dir: str | Path | None = None,
             batch_size: int = 64) -> ScoringJob:
    """Load the model, read and resolve the table, and claim the output (resuming a previous run of this job).

    The caller releases the output (``job.writer.release()``) when the job ends, finished or not.
    """
    index, count = parse_shard(shard)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    output = Path(output)
    if output.resolve() in {Path(input_table).resolve(), *([Path(catalogue).resolve()] if catalogue else [])}:
        raise ValueError(f"output {output} is the table being scored (input or catalogue); give another path")
    if output.exists() and not output.is_file():
        raise ValueError(f"output {output} is a folder, not a file: give a file path (e.g. {output / 'scores.csv'})")
    scorer = load_track_scorer(model_dir)
    table, _ = read_track_table(input_table)
    mine = resolve_ids(table[table["row"] % count == index], catalogue)
    writer = open_scores(output)
    done = writer.claim({"input": str(Path(input_table).resolve()), "model_dir": str(Path(model_dir).resolve()),
                         "shard": f"{index}/{count}", "labels": scorer.labels})
    todo = mine[~mine["row"].isin(done)]
    return ScoringJob(scorer, todo, len(mine), writer, Path(download_dir or output.parent / "downloads"),
                      f"{index}/{count}")


def score_table(input_table: str | Path, model_dir: str | Path, output: str | Path, shard: str = "0/1",
                batch_size: int = 64, catalogue: str | Path | None = None, cache_dir: str | Path | None = None,
                download_dir: str | Path | None = None, device: str = "auto", n_jobs: int = 1,
                progress: bool = True, also_csv: bool = False) -> dict[str, Any]:
    """Score this shard's rows of ``input_table`` into ``output`` (``.csv``, or ``.parquet``), here, one batch
    after another, resuming after rows already written.

    ``n_jobs`` processes extract audio features (on a GPU ``device`` they decode, and the features are
    computed there in batches); ``cache_dir`` caches them (nothing is cached without it).
    ``also_csv`` writes a Parquet output's CSV copy beside it. Returns the job's summary.
    """
    resolved = resolve_device(device)
    feature_device = str(resolved) if resolved.type == "cuda" else None
    cache = str(cache_dir) if cache_dir else None
    job = plan_job(input_table, model_dir, output, shard, catalogue, download_dir, batch_size)
    try:
        spec, downloader = scoring_inputs(job.scorer), Downloader(job.download_dir)
        start = time.perf_counter()
        statuses: list[str] = []
        for rows in progress_bar(job.batches(batch_size), desc=f"score shard {job.shard}", unit="batch",
                                 enabled=progress):
            out = output_rows(job.scorer, prepare_batch(spec, rows, downloader, cache, n_jobs, feature_device), device)
            job.writer.write(out)
            statuses += out["status"].tolist()
        return job.finish(statuses, time.perf_counter() - start, also_csv)
    finally:
        job.writer.release()
