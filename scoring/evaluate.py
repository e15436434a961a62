"""A trained model folder on a labelled catalogue it never saw: image-only vs. audio-only vs. fused.

For real tracks too few to train on (the 47 shared ones) or a catalogue from another source: every
track is scored through the same path as batch scoring (each branch's predict path, the run's
fitted fusion head), and the comparison is :func:`fusion.compare.compare_modalities`, with the
majority class beside it and intervals that also resample the album/artist groups.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from data.items import LoadResult
from data.labels import apply_label_set
from engine.io import atomic_path
from engine.predictions import probability_columns, with_predictions
from fusion.compare import compare_modalities
from scoring.tracks import load_track_scorer, score_files


def evaluate_tracks(model_dir: str | Path, loaded: LoadResult, out_dir: str | Path, cache_dir: str | Path | None = None,
                    aliases: dict[str, str] | None = None, device: str = "auto", n_jobs: int = 1, seed: int = 0,
                    context: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Score every track of ``loaded`` whose label is in the model's label set; write the comparison.

    ``out_dir`` receives ``predictions.csv`` (each track's cover, audio and fused probabilities and
    why a modality failed), ``problems.csv`` (rows that could not be used) and the comparison files.
    Returns the comparison rows (majority class, image-only, audio-only, fused).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scorer = load_track_scorer(model_dir)
    labels = scorer.labels
    items, counts = apply_label_set(loaded.items, labels, aliases=aliases)
    if items.empty:
        raise ValueError(f"none of the catalogue's tracks has a label of the model's classes {labels}")
    scores = score_files(scorer, items["cover_path"].tolist(), items["audio_path"].tolist(),
                         str(cache_dir) if cache_dir else None, device, n_jobs)
    y = items["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    # split/y as a branch's predictions.csv has them, so scripts/compare_runs.py pairs two evaluations.
    table = items[["item_id", "label", "group", "cover_path", "audio_path"]].assign(
        split="test", y=y, cover_error=scores.cover_errors, audio_error=scores.audio_errors)
    for prefix, proba in (("cover_", scores.p_cover), ("audio_", scores.p_audio)):
        table[[prefix + c for c in probability_columns(labels)]] = proba
    with atomic_path(out_dir / "predictions.csv") as temporary:
        with_predictions(table, scores.fused, labels).to_csv(temporary, index=False)
    problems = pd.concat([loaded.problems, pd.DataFrame(
        [{"where": modality, "item_id": item_id, "reason": reason}
         for modality, errors in (("cover", scores.cover_errors), ("audio", scores.audio_errors))
         for item_id, reason in zip(items["item_id"], errors) if reason])], ignore_index=True)
    problems.to_csv(out_dir / "problems.csv", index=False)
    fused_name = f"fused ({scorer.fusion_method})" if scorer.fusion_head is not None else "fused (one branch)"
    return compare_modalities(
        out_dir, y, scores.p_cover, scores.p_audio, scores.fused, labels, "real", fused_name,
        groups=items["group"].to_numpy(), seed=seed, item_ids=items["item_id"].to_numpy(),
        context={"model_dir": str(Path(model_dir).resolve()), "label_filter": counts, "problems": len(problems),
                 **(context or {})},
        notes=["Scored by a model trained on other data: no track here was seen in training or fitting.",
               f"Tracks outside the model's classes: {counts['out_of_set']} (left out)."])

