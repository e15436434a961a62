"""Feature extraction over an item table: parallel across processes, cached on disk, per-item failures recorded."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from audio.features import HOP_LENGTH, N_FFT, gtzan_features
from audio.io import SAMPLE_RATE, AudioError, read_audio, take_window
from data.gtzan import FEATURE_COLUMNS, SEGMENT_SAMPLES
from data.items import LoadResult, file_digest, problems_frame
from engine.cache import JsonCache, cache_key

#: Bump when the feature code changes what it computes, so old cache entries stop matching.
FEATURES_VERSION = 1

Outcome = tuple[dict[str, float] | None, str]  # (features, flag) or (None, error)


def _file_job(audio_path: str, segments: tuple[int, ...], cache_dir: str | None) -> list[Outcome]:
    """Features of each requested window of one file (``-1`` = whole clip, ``k`` = k-th 3-second segment).

    The file is hashed and decoded at most once, however many of its windows are asked for.
    """
    cache = JsonCache(cache_dir, "gtzan_features") if cache_dir else None
    name = Path(audio_path).name
    try:
        content = file_digest(audio_path, "sha1") if cache else ""
    except OSError as error:
        return [(None, f"missing file: {audio_path} ({error.strerror})")] * len(segments)
    decoded = None
    outcomes: list[Outcome] = []
    for segment in segments:
        params = {"v": FEATURES_VERSION, "sr": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP_LENGTH,
                  "segment": segment, "segment_samples": SEGMENT_SAMPLES}
        key = cache_key(content, params) if cache else ""
        if cache and (hit := cache.get(key)) is not None:
            outcomes.append((hit["features"], hit["flag"]))
            continue
        try:
            if decoded is None:
                decoded = read_audio(audio_path)
            if segment >= 0:
                clip = take_window(decoded, name, segment * SEGMENT_SAMPLES, SEGMENT_SAMPLES)
            else:
                clip = take_window(decoded, name)
        except AudioError as error:
            outcomes.append((None, str(error)))
            continue
        features = gtzan_features(clip.y, clip.sr)
        if cache:
            cache.put(key, {"features": features, "flag": clip.flags})
        outcomes.append((features, clip.flags))
    return outcomes


def extract_features(items: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                     progress: bool = True) -> LoadResult:
    """Add the 57 GTZAN feature columns to ``items`` (needs ``audio_path``; ``segment`` optional).

    Items whose audio is missing, unreadable, corrupt or silent are left out and listed in
    ``problems`` with the reason; clips padded to length keep their row and get a
    ``flag``. Results are cached per (file content, parameters) under ``cache_dir``.
    """
    items = items.reset_index(drop=True)
    segments = items["segment"] if "segment" in items.columns else pd.Series(-1, index=items.index)
    by_file: dict[str, list[int]] = {}
    for row, path in enumerate(items["audio_path"].astype(str)):
        by_file.setdefault(path, []).append(row)
    jobs = [(path, tuple(int(segments[r]) for r in rows), str(cache_dir) if cache_dir else None)
            for path, rows in by_file.items()]
    bar: dict[str, Any] = {"total": len(jobs), "desc": "audio files", "disable": not progress}
    if n_jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            per_file = list(tqdm(pool.map(_file_job, *zip(*jobs)), **bar))
    else:
        per_file = [_file_job(*job) for job in tqdm(jobs, **bar)]
    outcomes: dict[int, Outcome] = {}
    for rows, results in zip(by_file.values(), per_file):
        outcomes.update(zip(rows, results))
    rows_out, problems, keep = [], [], []
    for row in range(len(items)):
        features, note = outcomes[row]
        if features is None:
            problems.append({"where": items.at[row, "audio_path"], "item_id": items.at[row, "item_id"],
                             "reason": note})
            continue
        keep.append(row)
        rows_out.append({**features, "flag": note})
    table = items.loc[keep].drop(columns=[c for c in FEATURE_COLUMNS if c in items.columns]).reset_index(drop=True)
    table = pd.concat([table, pd.DataFrame(rows_out, columns=[*FEATURE_COLUMNS, "flag"])], axis=1)
    return LoadResult(table, problems_frame(problems))
