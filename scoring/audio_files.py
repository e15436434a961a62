"""Score audio files with a trained audio model: one row per file, failures recorded, never fatal."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from audio.predict import AudioModel, predict_audio
from data.gtzan import AUDIO_SUFFIXES
from engine.predictions import with_predictions


def find_audio_files(folder: str | Path) -> list[str]:
    """Audio files (by suffix) under ``folder``, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No such folder: {folder}")
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def score_audio_files(paths: Sequence[str], model: AudioModel, cache_dir: str | Path | None = None,
                      n_jobs: int = 1, device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Predict each file's genre through the audio predict path (segments averaged per file).

    Returns one row per path, in order: ``audio_path``, ``status`` (``ok``/``failed``), ``error``,
    ``windows`` (windows that could be used), ``predicted`` and ``p_<class>`` columns.
    """
    if not paths:
        raise ValueError("no audio files to score")
    unique = list(dict.fromkeys(paths))
    clips = pd.DataFrame({"item_id": unique, "audio_path": unique})
    scored, proba, problems = predict_audio(model, clips, cache_dir, n_jobs=n_jobs, device=device, progress=progress)
    table = pd.DataFrame({"audio_path": unique, "status": "failed", "error": "", "windows": 0})
    index = {path: i for i, path in enumerate(unique)}
    full = np.full((len(unique), len(model.labels)), np.nan)
    rows = [index[p] for p in scored["item_id"]]
    full[rows] = proba
    table.loc[rows, "status"] = "ok"
    table.loc[rows, "windows"] = scored["windows"].to_numpy() if "windows" in scored else 1
    for path, reason in zip(problems["item_id"], problems["reason"]):
        table.loc[index[path], "error"] = reason
    scored_table = with_predictions(table, full, model.labels)
    return scored_table.set_index("audio_path").loc[list(paths)].reset_index()
