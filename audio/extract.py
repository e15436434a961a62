"""Per-window audio inputs over an item table (GTZAN features or log-mel spectrograms).

Parallel across processes, cached on disk by file content and parameters, failures recorded
per item. Each file is hashed and decoded at most once, however many of its windows are asked
for (``segment`` column: ``-1`` = the whole clip, ``k`` = the k-th 3-second segment).
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from audio.features import HOP_LENGTH, N_FFT
from audio.features_torch import GtzanFeatures, gtzan_features_torch
from audio.io import SAMPLE_RATE, AudioError, check_audio_file, read_audio, take_window
from audio.mel import MelParams, MelSpectrogram
from audio.musicnn import SAMPLE_RATE as MUSICNN_SAMPLE_RATE
from audio.musicnn import musicnn_outputs, output_columns
from data.gtzan import FEATURE_COLUMNS, SEGMENT_HOP_SAMPLES, SEGMENT_SAMPLES
from data.items import LoadResult, file_digest, problems_frame
from engine.cache import ArrayCache, JsonCache, cache_key
from engine.progress import progress_bar

log = logging.getLogger(__name__)

#: Bump when the feature code changes what it computes, so old cache entries stop matching.
FEATURES_VERSION = 4
#: Frames kept of each 3-second log-mel (1 + 66,149 // 512 = 130 computed): the 128×128 input.
MEL_FRAMES = 128

Outcome = tuple[Any, str]  # (value, flag) or (None, error)


@dataclass
class _DecodedWindow:
    """A window decoded in a worker whose features the parent computes, batched on its device."""

    y: np.ndarray
    cache_key: str = ""


class _FeatureJob:
    """The 57 GTZAN features of a window, as a dict (JSON-cached), by the torch extractor.

    By default each worker computes its windows' features on its CPU core. ``decode_only``: workers
    only decode (:func:`decode_feature_windows`), and the features of all windows of one length are
    computed later in batches on ``device`` (``"cuda"``; ``"cpu"`` works too).
    """

    sr = SAMPLE_RATE
    #: Shortest file a model reading this input accepts (set per call from the model's input spec).
    min_seconds = 0.0
    namespace = "gtzan_features"
    cache_class = JsonCache
    params = {"v": FEATURES_VERSION, "sr": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP_LENGTH}

    def __init__(self, device: str | None = None, decode_only: bool = False) -> None:
        self.device = device
        self.decode_only = decode_only

    def compute(self, y: np.ndarray, sr: int) -> dict[str, float] | _DecodedWindow:
        return _DecodedWindow(y) if self.decode_only else gtzan_features_torch(y, sr)


class _MelJob:
    """A log-mel ``(n_mels, n_frames)`` float32 of a window (``.npy``-cached)."""

    sr = SAMPLE_RATE
    min_seconds = 0.0
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


class _MusicnnJob:
    """musicnn's mean tag probabilities and penultimate embeddings of a whole clip, at 16 kHz (``.npy``-cached)."""

    sr = MUSICNN_SAMPLE_RATE
    min_seconds = 0.0
    namespace = "musicnn"
    cache_class = ArrayCache

    def __init__(self, models: tuple[str, ...]) -> None:
        self.models = tuple(models)
        self.params = {"models": list(models), "v": 1}

    def compute(self, y: np.ndarray, sr: int) -> np.ndarray:
        try:
            return musicnn_outputs(y, self.models)
        except ValueError as error:  # too short for one 3-second patch
            raise AudioError(str(error)) from None


def _with_minimum(job, min_seconds: float):
    job.min_seconds = float(min_seconds)
    return job


def check_duration(audio_path: str, min_seconds: float) -> None:
    """Raise :class:`AudioError` when the file's header says it is shorter than ``min_seconds``."""
    if min_seconds <= 0:
        return
    try:
        info = sf.info(audio_path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"unreadable audio: {Path(audio_path).name}: {error}") from error
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds < min_seconds:
        raise AudioError(f"too short for this model: {Path(audio_path).name} lasts {seconds:.2f} s; "
                         f"the model needs at least {min_seconds:g} s")


def _file_job(audio_path: str, segments: tuple[int, ...], cache_dir: str | None, job) -> list[Outcome]:
    cache = job.cache_class(cache_dir, job.namespace) if cache_dir else None
    name = Path(audio_path).name
    try:
        if not audio_path:
            raise AudioError("no audio file given")
        check_audio_file(audio_path)  # before hashing: a device file would be hashed forever
        check_duration(audio_path, job.min_seconds)
        content = file_digest(audio_path, "sha1") if cache else ""
    except AudioError as error:
        return [(None, str(error))] * len(segments)
    except OSError as error:
        return [(None, f"unreadable file: {audio_path} ({error.strerror})")] * len(segments)
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
                decoded = read_audio(audio_path, sr=job.sr)
            if segment >= 0:
                if job.sr != SAMPLE_RATE:
                    raise AudioError(f"{job.namespace} reads whole clips, not 3-second segments")
                clip = take_window(decoded, name, segment * SEGMENT_HOP_SAMPLES, SEGMENT_SAMPLES)
                if clip.padded > SEGMENT_SAMPLES // 2:
                    raise AudioError(f"segment {segment} of {name} is mostly past the end of the file")
            else:
                clip = take_window(decoded, name)
        except AudioError as error:
            outcomes.append((None, str(error)))
            continue
        try:
            value = job.compute(clip.y, clip.sr)
        except AudioError as error:
            outcomes.append((None, str(error)))
            continue
        if isinstance(value, _DecodedWindow):  # computed and cached by the parent
            value.cache_key = key
            outcomes.append((value, clip.flags))
            continue
        # Padding flags are kept with feature entries; a padded mel is flagged by its features run.
        if cache:
            cache.put(key, {"value": value, "flag": clip.flags} if isinstance(value, dict) else value)
        outcomes.append((value, clip.flags))
    return outcomes


_POOLS: dict[int, ProcessPoolExecutor] = {}


@functools.cache
def compile_feature_kernels() -> None:
    """Compile the feature code's numba kernels in this process, once, before other processes compute features.

    numba caches compiled kernels on disk; two processes compiling them at the same time
    on a cold cache (a fresh environment) can leave a kernel's two cache files from different
    processes, and the next process to load them crashes (numba issue #10128). Compiled here
    first, the cache is whole before any worker starts, and the workers only read it.
    """
    noise = np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE).astype(np.float32)
    gtzan_features_torch(noise)


def _worker_pool(n_jobs: int) -> ProcessPoolExecutor:
    """A pool of ``n_jobs`` workers kept for the life of the process.

    Batch scoring calls the extractors once per batch; starting workers that import torch and
    librosa costs seconds each time, so they are started once and reused.
    """
    if n_jobs not in _POOLS:
        compile_feature_kernels()
        # Forked children of a process whose torch/OpenMP threads already ran can deadlock;
        # fresh "spawn" workers with one thread each avoid that (and oversubscription).
        _POOLS[n_jobs] = ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(os.getpid(),))
    return _POOLS[n_jobs]


def start_workers(n_jobs: int) -> None:
    """Start the kept pool of ``n_jobs`` feature workers now, each with its feature code loaded and
    warm, rather than at the first extraction (benchmarks do this before timing: a long scoring job
    pays the start-up once)."""
    if n_jobs > 1:
        # The executor spawns a process per task submitted while none is idle, so n_jobs tasks at once
        # start them all; each task (about a second of warm-up) keeps its worker busy while the
        # others take theirs.
        list(_worker_pool(n_jobs).map(_warm_worker, range(n_jobs)))


def _warm_worker(_: int) -> int:
    compile_feature_kernels()
    return os.getpid()


def _init_worker(parent_pid: int) -> None:
    """One torch thread per worker; and a worker ends with its parent, even one killed with SIGKILL
    (which runs no clean-up), instead of living on with hundreds of megabytes."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the parent died before the line above ran
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _map_on_workers(n_jobs: int, jobs: list[tuple], bar: dict[str, Any], retries: int = 1) -> list:
    """``_file_job`` over ``jobs`` on the kept pool, in order.

    A worker that dies (killed, out of memory) breaks its whole pool: the pool is replaced and
    the call is tried again on fresh workers, ``retries`` times; then ``BrokenProcessPool`` is raised.
    """
    pool = _worker_pool(n_jobs)
    try:
        return list(progress_bar(pool.map(_file_job, *zip(*jobs)), **bar))
    except BrokenProcessPool:
        _POOLS.pop(n_jobs, None)
        pool.shutdown(cancel_futures=True)
        if not retries:
            raise
    log.warning("an audio feature worker died; trying the %d files again on fresh workers", len(jobs))
    return _map_on_workers(n_jobs, jobs, bar, retries - 1)


def _outcomes(items: pd.DataFrame, job, cache_dir, n_jobs: int, progress: bool) -> dict[int, Outcome]:
    """Each row's outcome: its value (or, for a deferred feature job, its decoded window) and flag, or an error."""
    segments = items["segment"] if "segment" in items.columns else pd.Series(-1, index=items.index)
    by_file: dict[str, list[int]] = {}
    for row, path in enumerate(items["audio_path"].astype(str)):
        by_file.setdefault(path, []).append(row)
    jobs = [(path, tuple(int(segments.iloc[r]) for r in rows), str(cache_dir) if cache_dir else None, job)
            for path, rows in by_file.items()]
    bar: dict[str, Any] = {"total": len(jobs), "desc": f"{job.namespace} (audio files)", "enabled": progress}
    if n_jobs > 1 and len(jobs) > 1:
        per_file = _map_on_workers(n_jobs, jobs, bar)
    else:
        per_file = [_file_job(*args) for args in progress_bar(jobs, **bar)]
    outcomes: dict[int, Outcome] = {}
    for rows, results in zip(by_file.values(), per_file):
        outcomes.update(zip(rows, results))
    return outcomes


def _collect(items: pd.DataFrame, outcomes: dict[int, Outcome]) -> tuple[list[int], list[Outcome], pd.DataFrame]:
    """The rows that have a value (with it) and a problems table of the rest, in row order."""
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


def _run(items: pd.DataFrame, job, cache_dir, n_jobs: int, progress: bool) -> tuple[list[int], list[Outcome], pd.DataFrame]:
    return _collect(items, _outcomes(items, job, cache_dir, n_jobs, progress))


#: Device memory one 30-s window's features hold at their peak (its spectra and masks; counted from the
#: array sizes, not measured on a GPU), and the fewest and most windows of one batch on a GPU.
WINDOW_BYTES, GPU_BATCH_RANGE = 100 * 2**20, (8, 256)
#: Windows per batch on the CPU, where the batch size changes memory, not speed.
CPU_BATCH = 32


def windows_per_batch(free_bytes: int, window_samples: int) -> int:
    """Windows of ``window_samples`` samples that half of ``free_bytes`` of device memory holds, within
    :data:`GPU_BATCH_RANGE`: a GPU is kept busy by large batches (64–256 clips) where memory allows."""
    per_window = WINDOW_BYTES * window_samples / (30 * SAMPLE_RATE)
    return int(np.clip(free_bytes // 2 // per_window, *GPU_BATCH_RANGE))


def _device_batch(device: str, window_samples: int) -> int:
    if torch.device(device).type != "cuda":
        return CPU_BATCH
    free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
    return windows_per_batch(free_bytes, window_samples)


def _compute_decoded_windows(outcomes: dict[int, Outcome], job: _FeatureJob, cache_dir: str | Path | None) -> None:
    """Replace each decoded window in ``outcomes`` by its features, computed in batches of equal-length
    windows on ``job.device`` and cached; a batch the extractor refuses (too short) fails each of its windows."""
    module = GtzanFeatures(job.sr).to(job.device)
    cache = job.cache_class(cache_dir, job.namespace) if cache_dir else None
    by_length: dict[int, list[int]] = {}
    for row, (value, _) in outcomes.items():
        if isinstance(value, _DecodedWindow):
            by_length.setdefault(len(value.y), []).append(row)
    for length, rows in by_length.items():
        batch_size = _device_batch(job.device, length)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = torch.from_numpy(np.stack([outcomes[row][0].y for row in chunk])).to(job.device)
            try:
                values = module(batch).cpu().numpy()
            except AudioError as error:
                outcomes.update({row: (None, str(error)) for row in chunk})
                continue
            for row, features in zip(chunk, values):
                window, flag = outcomes[row]
                value = dict(zip(FEATURE_COLUMNS, features.tolist()))
                if cache:
                    cache.put(window.cache_key, {"value": value, "flag": flag})
                outcomes[row] = (value, flag)


def extract_features(items: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                     progress: bool = True, min_seconds: float = 0.0, device: str | None = None) -> LoadResult:
    """Add the 57 GTZAN feature columns to ``items`` (needs ``audio_path``; ``segment`` optional).

    Items whose audio is missing, unreadable, corrupt or silent are left out and listed in
    ``problems`` with the reason; windows padded to length keep their row and get a ``flag``.
    ``device`` (e.g. ``"cuda"``): the ``n_jobs`` workers decode, the features are computed in
    batches on that device (:func:`decode_feature_windows`, then :meth:`DecodedFeatureWindows.extract`);
    the values are the same either way.
    """
    if device:
        return decode_feature_windows(items, cache_dir, n_jobs, progress, min_seconds).extract(device)
    items = items.reset_index(drop=True)
    keep, values, problems = _run(items, _with_minimum(_FeatureJob(), min_seconds), cache_dir, n_jobs, progress)
    return _feature_table(items, keep, values, problems)


def _feature_table(items: pd.DataFrame, keep: list[int], values: list[Outcome], problems: pd.DataFrame) -> LoadResult:
    table = items.loc[keep].drop(columns=[c for c in FEATURE_COLUMNS if c in items.columns]).reset_index(drop=True)
    rows = [{**features, "flag": flag} for features, flag in values]
    table = pd.concat([table, pd.DataFrame(rows, columns=[*FEATURE_COLUMNS, "flag"])], axis=1)
    return LoadResult(table, problems)


@dataclass
class DecodedFeatureWindows:
    """Windows decoded (by CPU workers) whose GTZAN features are still to be computed, on a device of the
    holder's choosing: what a Ray CPU task hands a GPU actor. Picklable; windows already in the cache,
    and windows that failed, carry their value or error."""

    items: pd.DataFrame
    outcomes: dict[int, Outcome]
    cache_dir: str | None
    min_seconds: float

    def extract(self, device: str) -> LoadResult:
        """:func:`extract_features`' result, the features of the decoded windows computed in batches on ``device``."""
        _compute_decoded_windows(self.outcomes, _FeatureJob(device), self.cache_dir)
        return _feature_table(self.items, *_collect(self.items, self.outcomes))


def decode_feature_windows(items: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                           progress: bool = True, min_seconds: float = 0.0) -> DecodedFeatureWindows:
    """The first half of :func:`extract_features` on a device: each window decoded (``n_jobs`` workers) or read
    from the cache, nothing computed yet."""
    items = items.reset_index(drop=True)
    job = _with_minimum(_FeatureJob(decode_only=True), min_seconds)
    return DecodedFeatureWindows(items, _outcomes(items, job, cache_dir, n_jobs, progress),
                                 str(cache_dir) if cache_dir else None, float(min_seconds))


def extract_log_mels(items: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                     progress: bool = True, mel: MelParams = MelParams(),
                     n_frames: int | None = MEL_FRAMES, min_seconds: float = 0.0) -> tuple[LoadResult, np.ndarray]:
    """Log-mel spectrograms of each item's window: ``(kept items, array (n_kept, n_mels, n_frames))``.

    ``n_frames=None`` keeps every frame (windows must then be of equal length to stack).
    Failed items are left out and listed in ``problems``, as in :func:`extract_features`.
    """
    items = items.reset_index(drop=True)
    keep, values, problems = _run(items, _with_minimum(_MelJob(mel, n_frames), min_seconds), cache_dir, n_jobs,
                                  progress)
    mels = np.stack([value for value, _ in values]) if values else np.zeros((0, mel.n_mels, n_frames or 0), np.float32)
    return LoadResult(items.loc[keep].reset_index(drop=True), problems), mels


def extract_musicnn(items: pd.DataFrame, models: tuple[str, ...], output: str, cache_dir: str | Path | None = None,
                    n_jobs: int = 1, progress: bool = True, min_seconds: float = 0.0) -> tuple[LoadResult, np.ndarray]:
    """musicnn outputs of each item's whole clip: ``(kept items, array (n_kept, 50|200 · len(models)))``.

    ``output`` is ``"tags"`` (mean tag probabilities) or ``"embedding"`` (mean penultimate layer).
    Failed items (missing, unreadable, silent, shorter than 3 s) are listed in ``problems``.
    """
    if output not in ("tags", "embedding"):
        raise ValueError(f"musicnn output must be 'tags' or 'embedding', got {output!r}")
    items = items.reset_index(drop=True)
    keep, values, problems = _run(items, _with_minimum(_MusicnnJob(models), min_seconds), cache_dir, n_jobs,
                                  progress)
    columns = output_columns(tuple(models), output)
    array = np.stack([value[columns] for value, _ in values]) if values else np.zeros((0, len(columns)), np.float32)
    return LoadResult(items.loc[keep].reset_index(drop=True), problems), array
