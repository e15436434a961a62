"""Score audio files with a trained audio model: one row per file, failures recorded, never fatal."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from audio.mel import MelParams
from audio.train import audio_inputs, build_audio_model
from data.gtzan import AUDIO_SUFFIXES, segment_items
from engine.run import mean_by_group
from engine.trainer import load_checkpoint, predict_proba


def load_audio_model(checkpoint_path: str | Path) -> tuple[nn.Module, list[str], dict]:
    """Rebuild a trained audio model from its ``checkpoint.pt``: ``(model, labels, input spec)``."""
    record = load_checkpoint(checkpoint_path)
    if "model" not in record or "inputs" not in record:
        raise ValueError(f"{checkpoint_path} is not an audio-branch checkpoint (no model/input record)")
    model = build_audio_model(record["model"], len(record["labels"]))
    model.load_state_dict(record["model_state"])
    return model.eval(), list(record["labels"]), record["inputs"]


def find_audio_files(folder: str | Path) -> list[str]:
    """Audio files (by suffix) under ``folder``, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No such folder: {folder}")
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def score_audio_files(paths: Sequence[str], checkpoint_path: str | Path, cache_dir: str | Path | None = None,
                      n_jobs: int = 1, device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Predict each file's genre as the training pipeline does (segments averaged per file).

    Returns one row per path: ``audio_path``, ``status`` (``ok``/``failed``), ``error``,
    ``windows`` (windows that could be used), ``predicted`` and ``p_<class>`` columns. A
    segment past the end of a short file is skipped; a file with no usable window fails.
    """
    if not paths:
        raise ValueError("no audio files to score")
    model, labels, spec = load_audio_model(checkpoint_path)
    kinds = tuple(spec["kinds"])
    clips = pd.DataFrame({"item_id": list(paths), "audio_path": list(paths), "segment": -1, "y": -1})
    items = segment_items(clips, spec["segments"]) if spec.get("segments") else clips.assign(clip_item_id=clips["item_id"])
    inputs = audio_inputs(items, kinds, cache_dir, n_jobs=n_jobs, progress=progress,
                          mel=MelParams(**spec["mel"]), mel_frames=spec["mel_frames"])
    table = pd.DataFrame({"audio_path": list(paths), "status": "failed", "error": "", "windows": 0,
                          "predicted": ""}).set_index("audio_path", drop=False)
    for label in labels:
        table[f"p_{label}"] = np.nan
    if len(inputs.items):
        proba = predict_proba(model, inputs.dataset(kinds), device=device)
        files, _, file_proba = mean_by_group(inputs.items["clip_item_id"], inputs.items["y"], proba)
        windows = inputs.items.groupby("clip_item_id").size()
        table.loc[files, "status"] = "ok"
        table.loc[files, "windows"] = windows.loc[files].to_numpy()
        table.loc[files, "predicted"] = [labels[i] for i in file_proba.argmax(1)]
        table.loc[files, [f"p_{label}" for label in labels]] = file_proba
    if len(inputs.problems):
        reasons = inputs.problems.assign(clip=items.set_index("item_id").loc[inputs.problems["item_id"], "clip_item_id"].to_numpy())
        first_reason = reasons.groupby("clip")["reason"].first()
        failed = [p for p in first_reason.index if table.at[p, "status"] == "failed"]
        table.loc[failed, "error"] = first_reason.loc[failed].to_numpy()
    return table.reset_index(drop=True)

