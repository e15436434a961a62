"""Train and report a cover model: frozen-backbone head, full fine-tuning, or a baseline estimator.

Modes (``covers.mode``):
- ``finetune``: the paper's protocol, every layer trainable, new dropout + linear head;
- ``frozen``: the fast CPU mode, backbone embeddings computed once (cached), only the head trained;
- ``logreg_probe``: scikit-learn logistic regression on the cached embeddings (the frozen probe);
- ``random_forest``: colour histograms + LBP + Hu moments → scikit-learn RandomForest.
All use the saved split, the shared trainer (torch modes) and the one report path.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from covers.augment import build_class_augment
from covers.backbones import create_model
from covers.inputs import backbone_embeddings, decode_covers, normalise, random_forest_features
from engine.branch import prepare_from_config, write_branch_outputs
from engine.config import trainer_config
from engine.run import evaluate_estimator, train_evaluate
from engine.trainer import predict_proba, seed_everything

log = logging.getLogger(__name__)
MODES = ("finetune", "frozen", "logreg_probe", "random_forest")


class CoverImages(Dataset):
    """Decoded covers ``uint8 (n, s, s, 3)`` → normalised tensors, with per-class augmentation when training."""

    def __init__(self, images: np.ndarray, y: np.ndarray, info, augment: list | None = None) -> None:
        self.images, self.y, self.info, self.augment = images, y, info, augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        transform = self.augment[self.y[index]] if self.augment else None
        if transform is not None:
            image = transform(image)
        x = normalise(image.permute(1, 2, 0).numpy()[None], self.info)[0]
        return x, int(self.y[index])


def precision_class_weights(predictions_csv: str | Path, labels: list[str]) -> list[float]:
    """M4: weights inversely proportional to each class's precision on a previous run's *validation* items.

    Validation rather than test predictions, so the test set never shapes training. Normalised
    to mean 1; a class never predicted (precision undefined) gets the largest weight.
    """
    table = pd.read_csv(predictions_csv)
    val = table[table["split"] == "val"]
    if val.empty:
        raise ValueError(f"{predictions_csv} has no validation predictions to take precisions from")
    precision = []
    for label in labels:
        predicted = val[val["predicted"] == label]
        precision.append((predicted["label"] == label).mean() if len(predicted) else np.nan)
    precision = np.array(precision, dtype=float)
    floor = np.nanmin(precision[precision > 0]) if np.any(precision > 0) else 1.0
    weights = 1.0 / np.where(np.isnan(precision) | (precision <= 0), floor, precision)
    return (weights / weights.mean()).tolist()


def resolve_mode(mode: str) -> str:
    """``auto``: full fine-tuning where a GPU is available, the frozen-embedding mode on a CPU."""
    if mode == "auto":
        return "finetune" if torch.cuda.is_available() else "frozen"
    return mode


def display_name(branch: DictConfig) -> str:
    """``<backbone>_<mode>`` with ``auto`` resolved, for tables."""
    return f"{branch.model.backbone}_{resolve_mode(branch.mode)}"


def _split_arrays(items: pd.DataFrame, x: np.ndarray) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    return {p: (items[items["split"] == p].reset_index(drop=True), x[(items["split"] == p).to_numpy()])
            for p in ("train", "val", "test")}


def train_covers(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit ``cfg.covers`` on the train part (early stop on val), report on test, write ``predictions.csv``."""
    branch = cfg.covers
    mode = resolve_mode(branch.mode)
    if mode not in MODES:
        raise ValueError(f"covers.mode must be auto or one of {MODES}, got {mode!r}")
    augment_table = OmegaConf.to_container(branch.augment, resolve=True) if branch.get("augment") else None
    if augment_table and mode != "finetune":
        raise ValueError("covers.augment changes pixels, so it needs covers.mode=finetune "
                         f"(mode {mode} trains on inputs computed once)")
    model_cfg = OmegaConf.to_container(branch.model, resolve=True)
    prepared = prepare_from_config(cfg, branch.data, run_dir)
    labels = prepared.labels
    progress = cfg.trainer.progress
    if mode in ("frozen", "logreg_probe"):
        kept, x = backbone_embeddings(prepared.items, model_cfg["backbone"], cfg.paths.cache_dir,
                                      weights_path=model_cfg.get("weights_path"), progress=progress)
    elif mode == "random_forest":
        kept, x = random_forest_features(prepared.items, cfg.paths.cache_dir, progress=progress)
    else:
        # Built before decoding, so absent pretrained weights fail at once, not after minutes of work.
        finetuned = create_model(model_cfg["backbone"], len(labels), pretrained=model_cfg.get("pretrained", True),
                                 weights_path=model_cfg.get("weights_path"), dropout=model_cfg.get("dropout", 0.5))
        kept, x = decode_covers(prepared.items, finetuned.info.input_size, progress=progress)
    if len(kept.problems):
        kept.problems.to_csv(run_dir / "cover_problems.csv", index=False)
        log.warning("%d covers could not be used (listed in %s)", len(kept.problems), run_dir / "cover_problems.csv")
    parts = _split_arrays(kept.items, x)
    (train_items, x_train), (val_items, x_val), (test_items, x_test) = parts["train"], parts["val"], parts["test"]
    card = {"branch": "covers", "mode": mode, "model": model_cfg, "experiment": cfg.get("experiment_name"),
            "data": branch.data.name, **prepared.describe(),
            "split_name": prepared.split_path.stem, "cover_problems": len(kept.problems),
            "skipped_covers": kept.problems.to_dict(orient="records")[:50],
            "config": OmegaConf.to_container(branch, resolve=True)}
    title = f"covers {mode} {model_cfg.get('backbone', '')} · {branch.data.name} · split {prepared.split_path.stem}"
    seed = int(cfg.seed)

    if mode in ("logreg_probe", "random_forest"):
        estimator = _estimator(mode, seed, branch)
        metrics, _ = evaluate_estimator(estimator, x_train, train_items["y"].to_numpy(), x_test,
                                        test_items["y"].to_numpy(), labels, run_dir, title, card, seed=seed)
        held = pd.concat([val_items, test_items], ignore_index=True)
        proba = np.zeros((len(held), len(labels)))
        proba[:, estimator.classes_] = estimator.predict_proba(np.concatenate([x_val, x_test]))
        write_branch_outputs(run_dir, held, proba, labels)
        return metrics

    override = OmegaConf.to_container(branch.trainer, resolve=True)
    if branch.get("class_weights_from"):
        override["class_weights"] = precision_class_weights(branch.class_weights_from, labels)
        title += " · class weights 1/precision"
    config = trainer_config(cfg, override, train_targets=train_items["y"], n_classes=len(labels))
    seed_everything(config.seed)
    if mode == "frozen":
        model: nn.Module = nn.Sequential(nn.Dropout(model_cfg.get("dropout", 0.5)), nn.Linear(x.shape[1], len(labels)))
        datasets = [TensorDataset(torch.from_numpy(a), torch.tensor(i["y"].to_numpy(np.int64)))
                    for i, a in ((train_items, x_train), (val_items, x_val), (test_items, x_test))]
    else:
        model = finetuned
        card["weights"] = model.info.weights
        augment = build_class_augment(augment_table, labels, model.info.input_size) if augment_table else None
        datasets = [CoverImages(x_train, train_items["y"].to_numpy(), model.info, augment),
                    CoverImages(x_val, val_items["y"].to_numpy(), model.info),
                    CoverImages(x_test, test_items["y"].to_numpy(), model.info)]
    metrics, _, _ = train_evaluate(model, *datasets, test_items["y"].to_numpy(), labels, config, run_dir, title, card,
                                   checkpoint_metadata={"covers_model": {**model_cfg, "mode": mode},
                                                        "aliases": dict(cfg.labels.aliases)})
    held = pd.concat([val_items, test_items], ignore_index=True)
    held_set = torch.utils.data.ConcatDataset([datasets[1], datasets[2]])
    write_branch_outputs(run_dir, held, predict_proba(model, held_set, device=config.device), labels)
    return metrics


def _estimator(mode: str, seed: int, branch: DictConfig):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if mode == "random_forest":
        return RandomForestClassifier(n_estimators=branch.get("n_estimators", 500), n_jobs=-1, random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegression(C=branch.get("logreg_c", 1.0), max_iter=5000))
