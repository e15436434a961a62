"""Evaluate a trained cover model on any table with the ``covers.csv`` schema, without retraining."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from covers.predict import load_cover_model, predict_covers
from data.covers import load_covers_table
from data.labels import apply_label_set
from engine.predictions import write_predictions
from engine.report import evaluate_predictions, write_report


def evaluate_cover_model(checkpoint_path: str | Path, covers_csv: str | Path, out_dir: str | Path,
                         device: str = "auto", cache_dir: str | Path | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """Score every cover of ``covers_csv`` whose genre is in the model's label set; write the report.

    ``out_dir`` receives ``metrics.json``, ``report.txt``, ``confusion.png``, ``predictions.csv``
    (each cover's row with its predicted genre and ``p_<class>`` probabilities) and
    ``cover_problems.csv`` (rows and covers that could not be used). Returns the metrics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, _ = load_cover_model(checkpoint_path)
    labels = model.labels
    loaded = load_covers_table(covers_csv)
    items, counts = apply_label_set(loaded.items, labels, aliases=model.aliases, dedupe_on="md5")
    if items.empty:
        raise ValueError(f"{covers_csv} has no covers of the model's classes {labels}")
    items["y"] = items["label"].map({label: i for i, label in enumerate(labels)})
    kept, proba = predict_covers(model, items, cache_dir, device=device, progress=progress)
    problems = pd.concat([loaded.problems, kept.problems], ignore_index=True)
    problems.to_csv(out_dir / "cover_problems.csv", index=False)
    if kept.items.empty:
        raise ValueError(f"none of the {len(items)} covers of {covers_csv} in the model's classes could be used; "
                         f"the reason for each is in {out_dir / 'cover_problems.csv'}")
    metrics = evaluate_predictions(kept.items["y"].to_numpy(), proba.argmax(1), labels)
    write_report(out_dir, metrics, title=f"{Path(checkpoint_path)} on {covers_csv}",
                 extra={"checkpoint": str(checkpoint_path), "covers_csv": str(covers_csv), "label_filter": counts,
                        "cover_problems": len(problems)})
    write_predictions(out_dir / "predictions.csv", kept.items, proba, labels)
    return metrics
