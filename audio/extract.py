"""Feature extraction over an item table: parallel across processes, cached on disk, per-item failures recorded."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from audio.features import HOP_LENGTH, N_FFT, gtzan_features
from audio.io import SAMPLE_RATE, AudioError, load_audio
from data.gtzan import FEATURE_COLUMNS, SEGMENT_SAMPLES
from data.items import LoadResult, problems_frame
from engine.cache import JsonCache, cache_key, file_sha1

#: Bump when the feature code changes what it computes, so old cache entries stop matching.
FEATURES_VERSION = 1


def _job(audio_path: str, segment: int, cache_dir: str | None) -> tuple[dict[str, float] | None, str]:
    """Features of one clip (``segment < 0``) or one 3-second segment; returns ``(features, flag_or_error)``."""
    params = {"v": FEATURES_VERSION, "sr": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP_LENGTH, "segment": segment,
              "segment_samples": SEGMENT_SAMPLES}
    try:
        cache = JsonCache(cache_dir, "gtzan_features") if cache_dir else None
        key = cache_key(file_sha1(audio_path), params) if cache else ""
        if cache and (hit := cache.get(key)) is not None:
            return hit["features"], hit["flag"]
        if segment >= 0:
            clip = load_audio(audio_path, offset=segment * SEGMENT_SAMPLES, n_samples=SEGMENT_SAMPLES)
        else:
            clip = load_audio(audio_path)
        features = gtzan_features(clip.y, clip.sr)
        if cache:
            cache.put(key, {"features": features, "flag": clip.flags})
        return features, clip.flags
    except (AudioError, OSError) as error:
        return None, str(error)


def extract_features(items: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                     progress: bool = True) -> LoadResult:
    """Add the 57 GTZAN feature columns to ``items`` (needs ``audio_path``; ``segment`` optional).

    Items whose audio is missing, unreadable, corrupt or silent are left out and listed in
    ``problems`` with the reason; clips padded to length keep their row and get a
    ``flag``. Results are cached per (file content, parameters) under ``cache_dir``.
    """
    segments = items["segment"] if "segment" in items.columns else pd.Series(-1, index=items.index)
    jobs = [(str(path), int(seg), str(cache_dir) if cache_dir else None)
            for path, seg in zip(items["audio_path"], segments)]
    results: list[tuple[dict[str, float] | None, str]]
    bar: dict[str, Any] = {"total": len(jobs), "desc": "audio features", "disable": not progress}
    if n_jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            results = list(tqdm(pool.map(_job, *zip(*jobs), chunksize=4), **bar))
    else:
        results = [_job(*job) for job in tqdm(jobs, **bar)]
    rows, problems, keep = [], [], []
    for (features, note), (_, item) in zip(results, items.iterrows()):
        if features is None:
            problems.append({"where": item["audio_path"], "item_id": item["item_id"], "reason": note})
            continue
        keep.append(item.name)
        rows.append({**features, "flag": note})
    table = items.loc[keep].drop(columns=[c for c in FEATURE_COLUMNS if c in items.columns]).reset_index(drop=True)
    table = pd.concat([table, pd.DataFrame(rows, columns=[*FEATURE_COLUMNS, "flag"])], axis=1)
    return LoadResult(table, problems_frame(problems))
