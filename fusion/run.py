"""Fusion of a run's branches: pair their held-out outputs, fit the head on validation items, compare on test
items (image-only vs. audio-only vs. fused, beside the majority class) through :mod:`fusion.compare`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from engine.predictions import probability_columns, read_predictions, write_predictions
from fusion.compare import compare_modalities
from fusion.heads import FUSION_HEAD, both_present, create_fusion_head, fusion_inputs, save_fusion_head
from fusion.pairing import modality_counts, real_pairs, synthetic_pairs

log = logging.getLogger(__name__)


def _probabilities(pairs: pd.DataFrame, column: str, outputs: pd.DataFrame, labels: list[str]) -> np.ndarray:
    lookup = outputs.set_index("item_id")[probability_columns(labels)]
    proba = np.full((len(pairs), len(labels)), np.nan)
    present = (pairs[column] != "").to_numpy()
    proba[present] = lookup.loc[pairs.loc[present, column]].to_numpy(float)
    return proba


def make_pairs(covers: pd.DataFrame, audio: pd.DataFrame, mode: str, seed: int) -> tuple[pd.DataFrame, str]:
    """``(pairs, pairing mode)``; ``auto`` is real when the branches share item ids, else synthetic."""
    shared = set(covers["item_id"]) & set(audio["item_id"])
    if mode == "auto":
        mode = "real" if shared else "synthetic"
    if mode == "real":
        if not shared:
            raise ValueError("fusion.pairing=real but the branches share no item ids (separate collections); "
                             "use pairing=synthetic")
        return real_pairs(covers, audio), "real"
    if mode == "synthetic":
        return synthetic_pairs(covers, audio, seed), "synthetic"
    raise ValueError(f"fusion.pairing must be auto, real or synthetic; got {mode!r}")


def run_fusion(cfg: DictConfig, run_dir: Path, covers_dir: Path, audio_dir: Path,
               names: tuple[str, str] = ("image-only", "audio-only")) -> dict[str, dict[str, Any]]:
    """Fit the fusion head on validation items, compare on test items with both modalities.

    Writes into ``run_dir``: the fitted head (``fusion_head.json``, used by batch scoring),
    ``pairs_pairing-<mode>.csv``, ``predictions.csv`` (fused, every val/test item) and the
    comparison files of :func:`fusion.compare.compare_modalities`. With real pairs the intervals
    also resample the split's album/artist groups. Returns the comparison rows, keyed by printed name.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    covers, cover_labels = read_predictions(covers_dir)
    audio, audio_labels = read_predictions(audio_dir)
    if cover_labels != audio_labels:
        raise ValueError(f"the branches were trained on different label sets: {cover_labels} vs {audio_labels}")
    labels = cover_labels
    seed = int(cfg.seed)
    pairs, pairing = make_pairs(covers, audio, cfg.fusion.pairing, seed)
    pairs.to_csv(run_dir / f"pairs_pairing-{pairing}.csv", index=False)
    p_cover = _probabilities(pairs, "cover_item_id", covers, labels)
    p_audio = _probabilities(pairs, "audio_item_id", audio, labels)
    y = pairs["y"].to_numpy()
    x = fusion_inputs(p_cover, p_audio)
    has_both = both_present(x)
    fit_rows = (pairs["split"] == "val").to_numpy()
    test_rows = (pairs["split"] == "test").to_numpy()
    method = cfg.fusion.method
    head = create_fusion_head(method, random_state=seed, weight=cfg.fusion.get("weight"))
    head.fit(x[fit_rows], y[fit_rows])  # never sees a test item
    save_fusion_head(run_dir / FUSION_HEAD, method, head, labels=labels, pairing=pairing)
    fused = head.predict_proba(x)
    write_predictions(run_dir / "predictions.csv", pairs, fused, labels)

    context = {"method": method, "fitted_on": "validation items with both modalities",
               "fit_items": int((fit_rows & has_both).sum()), "head": {"weight": getattr(head, "weight_", None)},
               "validation_modalities": modality_counts(pairs[fit_rows]),
               "branches": {"covers": str(covers_dir), "audio": str(audio_dir)}}
    groups = pairs["group"].to_numpy()[test_rows] if pairing == "real" else None
    rows = compare_modalities(run_dir, y[test_rows], p_cover[test_rows], p_audio[test_rows], fused[test_rows], labels,
                              pairing, f"fused ({method})", names=names, groups=groups, seed=seed, context=context,
                              notes=[f"Fusion head fitted on {context['fit_items']} validation items; the rows are "
                                     "the test items."])
    return rows
