"""Evaluate a trained cover model on any table with the ``covers.csv`` schema, without retraining."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from covers.backbones import create_model
from covers.inputs import decode_covers
from covers.train import CoverImages
from data.covers import load_covers_table
from data.labels import apply_label_set
from engine.report import evaluate_predictions, write_report
from engine.trainer import load_checkpoint, predict_proba


def load_cover_model(checkpoint_path: str | Path) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """Rebuild a cover model from its ``checkpoint.pt``: ``(model, labels, checkpoint record)``.

    A frozen-mode checkpoint holds only the head; the backbone comes from the same pretrained
    weights it was trained on. A fine-tuned checkpoint holds every layer.
    """
    record = load_checkpoint(checkpoint_path)
    spec = record.get("covers_model")
    if spec is None:
        raise ValueError(f"{checkpoint_path} is not a cover-model checkpoint")
    labels = list(record["labels"])
    frozen = spec["mode"] == "frozen"
    model = create_model(spec["backbone"], len(labels), pretrained=frozen,
                         weights_path=spec.get("weights_path"), dropout=spec.get("dropout", 0.5))
    if frozen:
        model.head.load_state_dict(record["model_state"])
    else:
        model.load_state_dict(record["model_state"])
    return model.eval(), labels, record


def evaluate_cover_model(checkpoint_path: str | Path, covers_csv: str | Path, out_dir: str | Path,
                         device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Score every cover of ``covers_csv`` whose genre is in the model's label set; write the report.

    ``out_dir`` receives ``metrics.json``, ``report.txt``, ``confusion.png``, ``predictions.csv``
    (each cover's row with its predicted genre and ``p_<class>`` probabilities) and
    ``cover_problems.csv`` (rows and covers that could not be used). Returns the metrics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, labels, record = load_cover_model(checkpoint_path)
    loaded = load_covers_table(covers_csv)
    items, counts = apply_label_set(loaded.items, labels, aliases=record.get("aliases", {}), dedupe_on="md5")
    if items.empty:
        raise ValueError(f"{covers_csv} has no covers of the model's classes {labels}")
    items["y"] = items["label"].map({label: i for i, label in enumerate(labels)})
    decoded, images = decode_covers(items, model.info.input_size, progress=progress)
    kept = decoded.items
    problems = pd.concat([loaded.problems, decoded.problems], ignore_index=True)
    problems.to_csv(out_dir / "cover_problems.csv", index=False)
    if kept.empty:
        raise ValueError(f"none of the {len(items)} covers of {covers_csv} in the model's classes could be used; "
                         f"the reason for each is in {out_dir / 'cover_problems.csv'}")
    proba = predict_proba(model, CoverImages(images, kept["y"].to_numpy(), model.info), device=device)
    metrics = evaluate_predictions(kept["y"].to_numpy(), proba.argmax(1), labels)
    write_report(out_dir, metrics, title=f"{Path(checkpoint_path)} on {covers_csv}",
                 extra={"checkpoint": str(checkpoint_path), "covers_csv": str(covers_csv), "label_filter": counts,
                        "cover_problems": len(problems)})
    predictions = kept.assign(predicted=[labels[i] for i in proba.argmax(1)])
    for i, label in enumerate(labels):
        predictions[f"p_{label}"] = proba[:, i]
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    return metrics
