"""Train and report a cover model: frozen-backbone head, full fine-tuning, or a baseline estimator.

Modes (``covers.mode``, registered in :data:`COVER_MODES`):
- ``finetune``: the paper's protocol, every layer trainable, new dropout + linear head;
- ``frozen``: the fast CPU mode, backbone embeddings computed once (cached), only the head trained;
- ``logreg_probe``: scikit-learn logistic regression on the cached embeddings (the frozen probe);
- ``random_forest``: colour histograms + LBP + Hu moments → scikit-learn RandomForest.
All use the saved split, the shared trainer (torch modes), the branch's predict path for the
held-out predictions and the one report path.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import TensorDataset

from covers.augment import build_class_augment
from covers.backbones import BackboneInfo, CoverClassifier, MapsBackbone, classifier_head, create_backbone, create_model
from covers.inputs import backbone_embeddings, decode_covers, random_forest_features
from covers.predict import TORCH_MODES, CoverImages, CoverModel, predict_cover_inputs
from data.config import prepare_from_config
from data.items import LoadResult, missing_modality
from data.prepare import PreparedData
from engine.predictions import read_predictions
from engine.registry import Registry
from engine.run import fit_estimator_and_report, held_out, train_and_report
from engine.selection import train_with_selection
from engine.settings import trainer_config
from engine.trainer import TrainerConfig, seed_everything

log = logging.getLogger(__name__)
COVER_MODES: Registry = Registry("covers.mode")


@dataclass
class CoverRun:
    """Everything a mode needs: the config, the prepared data, and the run's card and title so far."""

    cfg: DictConfig
    run_dir: Path
    prepared: PreparedData
    model_cfg: dict[str, Any]
    augment: dict[str, list[str]] | None
    card: dict[str, Any]
    title: str
    #: Items of the table that have no cover (a paired catalogue's audio-only tracks), with the reason.
    no_cover: pd.DataFrame

    @property
    def labels(self) -> list[str]:
        return self.prepared.labels

    @property
    def progress(self) -> bool:
        return bool(self.cfg.trainer.progress)

    def parts(self, kept: LoadResult, x: np.ndarray) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
        """Record covers that could not be used, then split the kept items and their inputs by part."""
        problems = pd.concat([self.no_cover, kept.problems], ignore_index=True)
        self.card["cover_problems"] = len(problems)
        self.card["skipped_covers"] = problems.to_dict(orient="records")[:50]
        if len(problems):
            problems.to_csv(self.run_dir / "cover_problems.csv", index=False)
            log.warning("%d covers could not be used (listed in %s)", len(problems),
                        self.run_dir / "cover_problems.csv")
        items = kept.items
        masks = {"train": (items["split"] == "train").to_numpy(), "held": held_out(items)}
        return {part: (items[mask].reset_index(drop=True), x[mask]) for part, mask in masks.items()}

    def trainer(self, train_items: pd.DataFrame) -> TrainerConfig:
        override = OmegaConf.to_container(self.cfg.covers.trainer, resolve=True)
        if self.cfg.covers.get("class_weights_from"):
            override["class_weights"] = precision_class_weights(self.cfg.covers.class_weights_from, self.labels)
            self.title += " · class weights 1/precision"
        config = trainer_config(self.cfg, override, train_targets=train_items["y"], n_classes=len(self.labels))
        seed_everything(config.seed)
        return config

    def embeddings(self) -> tuple[MapsBackbone, BackboneInfo, LoadResult, np.ndarray]:
        """The pretrained backbone and its cached embeddings of every cover (frozen modes)."""
        spec = self.model_cfg
        backbone, info = create_backbone(spec["backbone"], pretrained=True, weights_path=spec.get("weights_path"))
        kept, x = backbone_embeddings(self.prepared.items, backbone, info, self.cfg.paths.cache_dir,
                                      progress=self.progress)
        return backbone, info, kept, x

    def checkpoint_metadata(self, mode: str) -> dict[str, Any]:
        return {"covers_model": {**self.model_cfg, "mode": mode}, "aliases": dict(self.cfg.labels.aliases)}


def precision_class_weights(predictions_csv: str | Path, labels: list[str]) -> list[float]:
    """M4: weights inversely proportional to each class's precision on a previous run's *validation* items.

    Validation rather than test predictions, so the test set never shapes training. Normalised
    to mean 1; a class never predicted (precision undefined) gets the largest weight.
    """
    table, _ = read_predictions(predictions_csv)
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


#: Modes that read a pretrained backbone.
BACKBONE_MODES = ("finetune", "frozen", "logreg_probe")


def check_covers_config(cfg: DictConfig) -> None:
    """Refuse now what :func:`train_covers` would refuse after its data is loaded and, in the main job,
    after the audio branch has trained: the mode, the backbone and its pretrained weights (loaded once
    per process for the frozen modes, once per call to fine-tune), the head's dropout, the trainer settings,
    the augment table and M4's predictions file. scripts/run.py calls it before any branch trains."""
    branch = cfg.covers
    mode = resolve_mode(branch.mode)
    COVER_MODES.get(mode)
    labels = list(cfg.labels.classes)
    spec = OmegaConf.to_container(branch.model, resolve=True)
    augment = OmegaConf.to_container(branch.augment, resolve=True) if branch.get("augment") else None
    if augment and mode != "finetune":
        raise ValueError(f"covers.augment changes pixels, so it needs covers.mode=finetune (mode {mode} trains "
                         "on inputs computed once)")
    if mode == "finetune":
        network = create_model(spec["backbone"], len(labels), pretrained=spec.get("pretrained", True),
                               weights_path=spec.get("weights_path"), dropout=spec.get("dropout", 0.5))
        build_class_augment(augment, labels, network.info.input_size)
    elif mode in BACKBONE_MODES:
        info = _pretrained_backbone_info(spec["backbone"], spec.get("weights_path"))
        classifier_head(info.embed_dim, len(labels), spec.get("dropout", 0.5))
    if mode in TORCH_MODES:
        # One stand-in target per class: balanced class weights are computed from the real ones at training.
        trainer_config(cfg, OmegaConf.to_container(branch.trainer, resolve=True), train_targets=range(len(labels)),
                       n_classes=len(labels))
    if branch.get("class_weights_from"):
        precision_class_weights(branch.class_weights_from, labels)


@functools.lru_cache(maxsize=None)
def _pretrained_backbone_info(name: str, weights_path: str | None) -> BackboneInfo:
    # A check that succeeded once holds for the process: a k-fold run checks before each of its cover
    # trainings (60 in the main job, ~0.2 s each), and the training's own load still fails loudly if the
    # weights went away meanwhile. A failed check is not cached (lru_cache keeps no exception).
    return create_backbone(name, pretrained=True, weights_path=weights_path)[1]


def train_covers(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit ``cfg.covers`` on the train part (early stop on val), report on test, write ``predictions.csv``.

    With ``covers.select``, each candidate is trained so and the best on validation kept
    (:func:`engine.selection.train_with_selection`)."""
    if cfg.covers.get("select"):
        return train_with_selection(cfg, "covers", run_dir, train_covers, check=check_covers_config)
    check_covers_config(cfg)
    branch = cfg.covers
    mode = resolve_mode(branch.mode)
    train_mode = COVER_MODES.get(mode)
    model_cfg = OmegaConf.to_container(branch.model, resolve=True)
    prepared = prepare_from_config(cfg, branch, run_dir)
    prepared.items, no_cover = missing_modality(prepared.items, "cover_path", "cover")
    card = {"branch": "covers", "mode": mode, "model": model_cfg, "experiment": cfg.get("experiment_name"),
            "data": prepared.name, **prepared.describe(), "split_name": prepared.split_path.stem,
            "config": OmegaConf.to_container(branch, resolve=True)}
    title = f"covers {mode} {model_cfg.get('backbone', '')} · {prepared.name} · split {prepared.split_path.stem}"
    augment = OmegaConf.to_container(branch.augment, resolve=True) if branch.get("augment") else None
    return train_mode(CoverRun(cfg, run_dir, prepared, model_cfg, augment, card, title, no_cover))


@COVER_MODES.register("finetune")
def _finetune(run: CoverRun) -> dict[str, Any]:
    spec = run.model_cfg
    # Built before decoding, so absent pretrained weights fail at once, not after minutes of work; seeded,
    # so the new head's (or a from-scratch backbone's) initial weights are the run's, whatever ran before.
    seed_everything(int(run.cfg.seed))
    network = create_model(spec["backbone"], len(run.labels), pretrained=spec.get("pretrained", True),
                           weights_path=spec.get("weights_path"), dropout=spec.get("dropout", 0.5))
    parts = run.parts(*decode_covers(run.prepared.items, network.info.input_size, run.cfg.paths.cache_dir,
                                     progress=run.progress))
    (train_items, x_train), (held, x_held) = parts["train"], parts["held"]
    config = run.trainer(train_items)
    run.card["weights"] = network.info.weights
    augment = build_class_augment(run.augment, run.labels, network.info.input_size) if run.augment else None
    val = (held["split"] == "val").to_numpy()
    model = CoverModel(network, run.labels, "finetune")
    metrics, _, _ = train_and_report(
        network, CoverImages(x_train, train_items["y"].to_numpy(), augment),
        CoverImages(x_held[val], held["y"].to_numpy()[val]), config, run.run_dir, run.labels,
        run.title, run.card, lambda _: (held, predict_cover_inputs(model, x_held, config.device), {}),
        checkpoint_metadata=run.checkpoint_metadata("finetune"))
    return metrics


@COVER_MODES.register("frozen")
def _frozen(run: CoverRun) -> dict[str, Any]:
    backbone, info, kept, x = run.embeddings()
    parts = run.parts(kept, x)
    (train_items, x_train), (held, x_held) = parts["train"], parts["held"]
    config = run.trainer(train_items)
    head = classifier_head(info.embed_dim, len(run.labels), run.model_cfg.get("dropout", 0.5))
    model = CoverModel(CoverClassifier(backbone, info, head), run.labels, "frozen")
    val = (held["split"] == "val").to_numpy()
    datasets = [TensorDataset(torch.from_numpy(x), torch.tensor(items["y"].to_numpy(np.int64)))
                for items, x in ((train_items, x_train), (held[val], x_held[val]))]
    metrics, _, _ = train_and_report(
        head, *datasets, config, run.run_dir, run.labels, run.title, run.card,
        lambda _: (held, predict_cover_inputs(model, x_held, config.device), {}),
        checkpoint_metadata=run.checkpoint_metadata("frozen"))
    return metrics


def _fit_estimator(run: CoverRun, estimator: Any, kept: LoadResult, x: np.ndarray) -> dict[str, Any]:
    parts = run.parts(kept, x)
    (train_items, x_train), (held, x_held) = parts["train"], parts["held"]
    metrics, _ = fit_estimator_and_report(estimator, x_train, train_items["y"].to_numpy(), held, x_held, run.labels,
                                          run.run_dir, run.title, run.card, seed=int(run.cfg.seed))
    return metrics


@COVER_MODES.register("logreg_probe")
def _logreg_probe(run: CoverRun) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, _, kept, x = run.embeddings()
    estimator = make_pipeline(StandardScaler(), LogisticRegression(C=run.cfg.covers.get("logreg_c", 1.0), max_iter=5000))
    return _fit_estimator(run, estimator, kept, x)


@COVER_MODES.register("random_forest")
def _random_forest(run: CoverRun) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier

    kept, x = random_forest_features(run.prepared.items, run.cfg.paths.cache_dir, progress=run.progress)
    estimator = RandomForestClassifier(n_estimators=run.cfg.covers.get("n_estimators", 500), n_jobs=-1,
                                       random_state=int(run.cfg.seed))
    return _fit_estimator(run, estimator, kept, x)
