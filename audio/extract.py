"""Per-window audio inputs over an item table (GTZAN features or log-mel spectrograms).

Parallel across processes, cached on disk by file content and parameters, failures recorded
per item. Each file is hashed and decoded at most once, however many of its windows are asked
for (``segment`` column: ``-1`` = the whole clip, ``k`` = the k-th 3-second segment).
"""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from audio.features import HOP_LENGTH, N_FFT, gtzan_features
from audio.io import SAMPLE_RATE, AudioError, read_audio, take_window
from audio.mel import MelParams, MelSpectrogram
from data.gtzan import FEATURE_COLUMNS, SEGMENT_HOP_SAMPLES, SEGMENT_SAMPLES
from data.items import LoadResult, file_digest, problems_frame
from engine.cache import ArrayCache, JsonCache, cache_key

log = logging.getLogger(__name__)

#: Bump when the feature code changes what it computes, so old cache entries stop matching.
FEATURES_VERSION = 3
#: Frames kept of each 3-second log-mel (1 + 66,149 // 512 = 130 computed): the 128×128 input.
MEL_FRAMES = 128

Outcome = tuple[Any, str]  # (value, flag) or (None, error)


class _FeatureJob:
    """The 57 GTZAN features of a window, as a dict (JSON-cached)."""

    namespace = "gtzan_features"
    cache_class = JsonCache
    params = {"v": FEATURES_VERSION, "sr": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP_LENGTH}

    def compute(self, y: np.ndarray, sr: int) -> dict[str, float]:
        return gtzan_features(y, sr)


class _MelJob:
    """A log-mel ``(n_mels, n_frames)`` float32 of a window (``.npy``-cached)."""

    namespace = "log_mel"
    cache_class = ArrayCache

    def __init__(self, mel: MelParams, n_frames: int | None) -> None:
        self.transform = MelSpectrogram(mel)
        self.n_frames = n_frames
        self.params = {**mel.as_dict(), "n_frames": n_frames}

    def compute(self, y: np.ndarray, sr: int) -> np.ndarray:
        with torch.no_grad():
            out = self.transform(torch.from_numpy(y)).numpy()[0]
        if self.n_frames is not None:
            out = out[:, : self.n_frames]
            if out.shape[1] < self.n_frames:
                out = np.pad(out, [(0, 0), (0, self.n_frames - out.shape[1])], constant_values=out.min())
        return np.ascontiguousarray(out, dtype=np.float32)


def _file_job(audio_path: str, segments: tuple[int, ...], cache_dir: str | None, job) -> list[Outcome]:
    cache = job.cache_class(cache_dir, job.namespace) if cache_dir else None
    name = Path(audio_path).name
    try:
        content = file_digest(audio_path, "sha1") if cache else ""
    except OSError as error:
        return [(None, f"missing file: {audio_path} ({error.strerror})")] * len(segments)
    decoded = None
    outcomes: list[Outcome] = []
    for segment in segments:
        window = {"segment": segment, "segment_samples": SEGMENT_SAMPLES, "segment_hop": SEGMENT_HOP_SAMPLES}
        key = cache_key(content, {**job.params, **window}) if cache else ""
        if cache and (hit := cache.get(key)) is not None:
            outcomes.append((hit["value"], hit["flag"]) if isinstance(hit, dict) else (hit, ""))
            continue
        try:
            if decoded is None:
                decoded = read_audio(audio_path)
            if segment >= 0:
                clip = take_window(decoded, name, segment * SEGMENT_HOP_SAMPLES, SEGMENT_SAMPLES)
                if clip.padded > SEGMENT_SAMPLES // 2:
                    raise AudioError(f"segment {segment} of {name} is mostly past the end of the file")
            else:
                clip = take_window(decoded, name)
        except AudioError as error:
            outcomes.append((None, str(error)))
            continue
        value = job.compute(clip.y, clip.sr)
        # Padding flags are kept with feature entries; a padded mel is flagged by its features run.
        if cache:
            cache.put(key, {"value": value, "flag": clip.flags} if isinstance(value, dict) else value)
        outcomes.append((value, clip.flags))
    return outcomes


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _worker_pool(n_jobs: int) -> ProcessPoolExecutor:
    """A pool of ``n_jobs`` workers kept for the life of the process.

    Batch scoring calls the extractors once per batch; starting workers that import torch and
    librosa costs seconds each time, so they are started once and reused.
    """
    if n_jobs not in _POOLS:
        # Forked children of a process whose torch/OpenMP threads already ran can deadlock;
        # fresh "spawn" workers with one thread each avoid that (and oversubscription).
        _POOLS[n_jobs] = ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=torch.set_num_threads, initargs=(1,))
    return _POOLS[n_jobs]


def _map_on_workers(n_jobs: int, jobs: list[tuple], bar: dict[str, Any], retries: int = 1) -> list:
    """``_file_job`` over ``jobs`` on the kept pool, in order.

    A worker that dies (killed, out of memory) breaks its whole pool: the pool is replaced and
    the call is tried again on fresh workers, ``retries`` times; then ``BrokenProcessPool`` is raised.
    """
    pool = _worker_pool(n_jobs)
    try:
        return list(tqdm(pool.map(_file_job, *zip(*jobs)), **bar))
    except BrokenProcessPool:
        _POOLS.pop(n_jobs, None)
        pool.shutdown(cancel_futures=True)
        if not retries:
            raise
    log.warning("an audio feature worker died; trying the %d files again on fresh workers", len(jobs))
    return _map_on_workers(n_jobs, jobs, bar, retries - 1)


def _run(items: pd.DataFrame, job, cache_dir, n_jobs: int, progress: bool) -> tuple[list[int], list[Outcome], pd.DataFrame]:
    segments = items["segment"] if "segment" in items.columns else pd.Series(-1, index=items.index)
    by_file: dict[str, list[int]] = {}
    for row, path in enumerate(items["audio_path"].astype(str)):
        by_file.setdefault(path, []).append(row)
    jobs = [(path, tuple(int(segments.iloc[r]) for r in rows), str(cache_dir) if cache_dir else None, job)
            for path, rows in by_file.items()]
    bar: dict[str, Any] = {"total": len(jobs), "desc": f"{job.namespace} (audio files)", "disable": not progress}
    if n_jobs > 1 and len(jobs) > 1:
        per_file = _map_on_workers(n_jobs, jobs, bar)
    else:
        per_file = [_file_job(*args) for args in tqdm(jobs, **bar)]
    outcomes: dict[int, Outcome] = {}
    for rows, results in zip(by_file.values(), per_file):
        outcomes.update(zip(rows, results))
    keep, values, problems = [], [], []
    for row in range(len(items)):
        value, note = outcomes[row]
        if value is None:
            problems.append({"where": items["audio_path"].iloc[row], "item_id": items["item_id"].iloc[row],
                             "reason": note})
        else:
            keep.append(row)
            values.append((value, note))
    return keep, values, problems_frame(problems)


def extract_features(items: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                     progress: bool = True) -> LoadResult:
    """Add the 57 GTZAN feature columns to ``items`` (needs ``audio_path``; ``segment`` optional).

    Items whose audio is missing, unreadable, corrupt or silent are left out and listed in
    ``problems`` with the reason; windows padded to length keep their row and get a ``flag``.
    """
    items = items.reset_index(drop=True)
    keep, values, problems = _run(items, _FeatureJob(), cache_dir, n_jobs, progress)
    table = items.loc[keep].drop(columns=[c for c in FEATURE_COLUMNS if c in items.columns]).reset_index(drop=True)
    rows = [{**features, "flag": flag} for features, flag in values]
    table = pd.concat([table, pd.DataFrame(rows, columns=[*FEATURE_COLUMNS, "flag"])], axis=1)
    return LoadResult(table, problems)


def extract_log_mels(items: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                     progress: bool = True, mel: MelParams = MelParams(),
                     n_frames: int | None = MEL_FRAMES) -> tuple[LoadResult, np.ndarray]:
    """Log-mel spectrograms of each item's window: ``(kept items, array (n_kept, n_mels, n_frames))``.

    ``n_frames=None`` keeps every frame (windows must then be of equal length to stack).
    Failed items are left out and listed in ``problems``, as in :func:`extract_features`.
    """
    items = items.reset_index(drop=True)
    keep, values, problems = _run(items, _MelJob(mel, n_frames), cache_dir, n_jobs, progress)
    mels = np.stack([value for value, _ in values]) if values else np.zeros((0, mel.n_mels, n_frames or 0), np.float32)
    return LoadResult(items.loc[keep].reset_index(drop=True), problems), mels
