"""A scoring job: a track table and a model folder → a scores table, one output row per input row.

The job is the same whatever runs it: the table read (CSV or Parquet), ids resolved through the
catalogue, this shard's rows, the rows a previous run already wrote left out; then batches go
through the steps of :mod:`scoring.tracks` (fetch, decode covers, audio features, cover network,
audio model, fusion) and into the output as each finishes. :func:`score_table` runs them here as a
pipeline (:mod:`scoring.pipeline`: every step in its own thread, a few batches apart);
``engine=ray`` (:mod:`scoring.ray_engine`) runs the same steps, as ``prepare_batch`` and
``output_rows``, on a Ray cluster.
``shard=i/n`` scores rows ``r`` with ``r % n == i``, so that machines without a shared cluster
can split one catalogue.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from acquire.http import Downloader, RetryPolicy
from engine.inference import resolve_device
from engine.progress import progress_bar
from scoring.pipeline import StageClock, run_stages
from scoring.tables import ScoresWriter, open_scores, parse_shard, read_track_table, resolve_ids, write_csv_copy
from scoring.tracks import (ModalityScores, PreparedBatch, TrackScorer, audio_scores, cover_scores, fetch_batch,
                            fuse_scores, load_track_scorer, output_columns, prepare_batch_audio, prepare_batch_covers,
                            scored_rows, scoring_inputs)

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
             batch_size: int = 64, cover_precision: str = "auto") -> ScoringJob:
    """Load the model (its cover network to run in ``cover_precision``), read and resolve the table, and claim
    the output (resuming a previous run of this job).

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
    scorer = load_track_scorer(model_dir, cover_precision)
    table, _ = read_track_table(input_table)
    mine = resolve_ids(table[table["row"] % count == index], catalogue)
    writer = open_scores(output)
    done = writer.claim({"input": str(Path(input_table).resolve()), "model_dir": str(Path(model_dir).resolve()),
                         "shard": f"{index}/{count}", "labels": scorer.labels})
    todo = mine[~mine["row"].isin(done)]
    return ScoringJob(scorer, todo, len(mine), writer, Path(download_dir or output.parent / "downloads"),
                      f"{index}/{count}")


#: Batches in flight between two stages of the pipeline (memory is bounded by this, not by the table).
PIPELINE_DEPTH = 2
#: Rows per batch when the job's ``batch_size`` is ``auto``: on a GPU, batches that fill it (the feature
#: extractor and the cover network both gain up to ~2× from 64 to 256 rows); on a CPU, small batches
#: keep the stages' queues short.
AUTO_BATCH_SIZE = {"cuda": 256, "cpu": 64}


def resolve_batch_size(batch_size: int | str, device: torch.device) -> int:
    """``auto`` → :data:`AUTO_BATCH_SIZE` for the device's type; a number stays as it is."""
    if batch_size == "auto":
        return AUTO_BATCH_SIZE.get(device.type, AUTO_BATCH_SIZE["cpu"])
    try:
        return int(batch_size)
    except (TypeError, ValueError):
        raise ValueError(f"batch_size must be a number or auto, got {batch_size!r}") from None


@dataclass
class _InFlight:
    """One batch on its way through the pipeline: prepared inputs, then each modality's scores, then rows."""

    prepared: PreparedBatch
    cover: ModalityScores | None = None
    audio: ModalityScores | None = None
    out: pd.DataFrame | None = None


def scoring_stages(job: ScoringJob, downloader: Downloader, cache_dir: str | None, n_jobs: int,
                   feature_device: str | None, device: str) -> list[tuple[str, Callable[[Any], Any]]]:
    """The pipeline's stages for ``job``'s model, first to last: rows in, written rows out.

    Each stage calls one step of :mod:`scoring.tracks` (the same steps as ``prepare_batch`` and
    ``output_rows``, which the Ray engine runs), so the numbers are those of a batch scored alone.
    """
    scorer, spec = job.scorer, scoring_inputs(job.scorer)

    def fetch(rows: pd.DataFrame) -> _InFlight:
        return _InFlight(fetch_batch(spec, rows, downloader))

    def decode_covers(batch: _InFlight) -> _InFlight:
        prepare_batch_covers(spec, batch.prepared, cache_dir)
        return batch

    def audio_features(batch: _InFlight) -> _InFlight:
        prepare_batch_audio(spec, batch.prepared, cache_dir, n_jobs, feature_device)
        return batch

    def cover_network(batch: _InFlight) -> _InFlight:
        batch.cover = cover_scores(scorer, batch.prepared.covers, len(batch.prepared.rows), device)
        return batch

    def audio_model(batch: _InFlight) -> _InFlight:
        batch.audio = audio_scores(scorer, batch.prepared.audio, len(batch.prepared.rows), device)
        return batch

    def fusion(batch: _InFlight) -> _InFlight:
        n = len(batch.prepared.rows)
        cover = batch.cover if batch.cover is not None else cover_scores(scorer, None, n)  # no cover model
        audio = batch.audio if batch.audio is not None else audio_scores(scorer, None, n)  # no audio model
        scores = fuse_scores(scorer, cover, audio)
        batch.out = scored_rows(scorer, batch.prepared, scores)
        return batch

    def write(batch: _InFlight) -> list[str]:
        job.writer.write(batch.out)
        return batch.out["status"].tolist()

    covers, audio = scorer.cover_model is not None, scorer.audio_model is not None
    stages = [("fetch", fetch), *([("decode covers", decode_covers)] if covers else []),
              *([("audio features", audio_features)] if audio else []),
              *([("cover network", cover_network)] if covers else []),
              *([("audio model", audio_model)] if audio else []), ("fusion", fusion), ("write", write)]
    return stages


def score_table(input_table: str | Path, model_dir: str | Path, output: str | Path, shard: str = "0/1",
                batch_size: int | str = "auto", catalogue: str | Path | None = None,
                cache_dir: str | Path | None = None, download_dir: str | Path | None = None, device: str = "auto",
                n_jobs: int = 1, progress: bool = True, also_csv: bool = False,
                depth: int = PIPELINE_DEPTH, download: RetryPolicy | None = None,
                cover_precision: str = "auto") -> dict[str, Any]:
    """Score this shard's rows of ``input_table`` into ``output`` (``.csv``, or ``.parquet``), here,
    resuming after rows already written.

    The batches go through a pipeline (:mod:`scoring.pipeline`): fetching and decoding run ahead of
    the models by up to ``depth`` batches and writing runs behind them, each stage in its own thread.
    ``n_jobs`` processes extract audio features (on a GPU ``device`` they decode, and the features are
    computed there in batches); ``cache_dir`` caches them (nothing is cached without it).
    ``batch_size``: rows per batch, or ``auto`` (:data:`AUTO_BATCH_SIZE`). ``download``: the limits of
    URL downloads (deadline, least rate, size; :class:`acquire.http.RetryPolicy`'s defaults without it).
    ``cover_precision``: the cover network's (``engine.inference.PRECISIONS``; ``auto`` is bf16 on a GPU only).
    ``also_csv`` writes a
    Parquet output's CSV copy beside it. Returns the job's summary, with each stage's busy share.
    """
    resolved = resolve_device(device)
    batch_size = resolve_batch_size(batch_size, resolved)
    feature_device = str(resolved) if resolved.type == "cuda" else None
    cache = str(cache_dir) if cache_dir else None
    job = plan_job(input_table, model_dir, output, shard, catalogue, download_dir, batch_size, cover_precision)
    try:
        stages = scoring_stages(job, Downloader(job.download_dir, download), cache, n_jobs, feature_device, device)
        clock = StageClock()
        start = time.perf_counter()
        statuses: list[str] = []
        bar = progress_bar(desc=f"score shard {job.shard}", total=len(job.todo), unit="track", enabled=progress)
        first_batch: tuple[float, int] | None = None  # (seconds until the first batch was written, its rows)
        for written in run_stages(job.batches(batch_size), stages, depth, clock):
            statuses += written
            first_batch = first_batch or (time.perf_counter() - start, len(written))
            bar.update(len(written))
        bar.close()
        seconds = time.perf_counter() - start
        summary = job.finish(statuses, seconds, also_csv)
        summary |= {"batch_size": batch_size, "stage_busy_share": clock.shares(seconds),
                    "stage_seconds": {stage: round(t, 2) for stage, t in clock.busy.items()}}
        if first_batch:
            # After the first batch every stage is busy: what a long job sustains.
            later_seconds, later_rows = seconds - first_batch[0], len(statuses) - first_batch[1]
            summary |= {"seconds_to_first_batch": round(first_batch[0], 2),
                        "steady_tracks_per_s": round(later_rows / later_seconds, 2) if later_rows else None}
        return summary
    finally:
        job.writer.release()
