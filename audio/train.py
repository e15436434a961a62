"""Train and report an audio model: the feature MLP, the mel-CNN or the hybrid of both.

Data flow: clip items → split saved on clips → (optionally) 3-second segments that inherit
their clip's part → inputs (features and/or log-mels, cached) → the shared trainer → a report
on clips (segment probabilities averaged per clip) → ``predictions.csv`` for fusion.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from audio.extract import MEL_FRAMES, extract_features, extract_log_mels
from audio.feature_mlp import FeatureMLP
from audio.mel import MelParams
from audio.models import HybridNet, MelCNN
from data.gtzan import FEATURE_COLUMNS, segment_items
from engine.branch import prepare_from_config, write_branch_outputs
from engine.config import trainer_config
from engine.report import add_to_metrics, paired_accuracy_difference
from engine.run import evaluate_estimator, mean_by_group, train_evaluate
from engine.trainer import predict_proba, seed_everything

log = logging.getLogger(__name__)

#: Which inputs each model kind reads, in the order its forward() takes them.
MODEL_INPUTS = {"feature_mlp": ("features",), "mel_cnn": ("mel",), "hybrid": ("mel", "features")}


def build_audio_model(model_cfg: dict[str, Any], n_classes: int) -> nn.Module:
    """The model a config (or a checkpoint's ``model`` record) describes, untrained."""
    kind = model_cfg.get("kind")
    if kind not in MODEL_INPUTS:
        raise ValueError(f"audio.model.kind must be one of {sorted(MODEL_INPUTS)}, got {kind!r}")
    dropout = model_cfg.get("dropout", 0.3)
    mlp = FeatureMLP(len(FEATURE_COLUMNS), n_classes, hidden=list(model_cfg.get("hidden", (256, 128, 64))),
                     dropout=dropout)
    if kind == "feature_mlp":
        return mlp
    cnn = MelCNN(n_classes, channels=list(model_cfg.get("channels", (16, 32, 64, 128))), dropout=dropout)
    if kind == "mel_cnn":
        return cnn
    return HybridNet(cnn, mlp, n_classes, hidden=model_cfg.get("head_hidden", 128), dropout=dropout)


@dataclass
class AudioInputs:
    """Items that have every input a model needs, aligned row for row with the arrays."""

    items: pd.DataFrame
    arrays: dict[str, np.ndarray]
    problems: pd.DataFrame

    def subset(self, mask: np.ndarray) -> "AudioInputs":
        mask = np.asarray(mask, dtype=bool)
        return AudioInputs(self.items[mask].reset_index(drop=True), {k: v[mask] for k, v in self.arrays.items()},
                           self.problems)

    def dataset(self, kinds: tuple[str, ...]) -> Dataset:
        # np.require copies only arrays that are read-only (cached inputs can be), which torch cannot wrap.
        return _TensorTuples([torch.from_numpy(np.require(self.arrays[k], requirements="W")) for k in kinds],
                             torch.tensor(self.items["y"].to_numpy(np.int64)))


class _TensorTuples(Dataset):
    """``(input, y)`` or ``((input_1, input_2, …), y)`` pairs, as the trainer expects."""

    def __init__(self, inputs: list[torch.Tensor], y: torch.Tensor) -> None:
        self.inputs, self.y = inputs, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        x = tuple(t[index] for t in self.inputs)
        return (x if len(x) > 1 else x[0]), self.y[index]


def audio_inputs(items: pd.DataFrame, kinds: tuple[str, ...], cache_dir: str | Path | None, n_jobs: int = 1,
                 progress: bool = True, mel: MelParams = MelParams(), mel_frames: int = MEL_FRAMES) -> AudioInputs:
    """Features (from the item table when it has them, else extracted) and/or log-mels of each item.

    Items whose audio fails are dropped and listed in ``problems``.
    """
    items = items.reset_index(drop=True)
    problems = []
    if "features" in kinds and not set(FEATURE_COLUMNS) <= set(items.columns):
        extracted = extract_features(items, cache_dir=cache_dir, n_jobs=n_jobs, progress=progress)
        items, problems = extracted.items, [extracted.problems]
    arrays: dict[str, np.ndarray] = {}
    if "mel" in kinds:
        kept, mels = extract_log_mels(items, cache_dir=cache_dir, n_jobs=n_jobs, progress=progress, mel=mel,
                                      n_frames=mel_frames)
        items, arrays["mel"] = kept.items, mels
        problems.append(kept.problems)
    if "features" in kinds:
        arrays["features"] = items[FEATURE_COLUMNS].to_numpy(np.float32)
    problems_table = pd.concat(problems, ignore_index=True) if problems else pd.DataFrame()
    return AudioInputs(items, arrays, problems_table)


def _held_out_predictions(model: nn.Module, inputs: AudioInputs, kinds: tuple[str, ...], device: str,
                          by_clip: bool) -> tuple[pd.DataFrame, np.ndarray]:
    held = inputs.subset(inputs.items["split"].isin(["val", "test"]).to_numpy())
    proba = predict_proba(model, held.dataset(kinds), device=device)
    if not by_clip:
        return held.items, proba
    clips, _, clip_proba = mean_by_group(held.items["clip_item_id"], held.items["y"], proba)
    clip_rows = held.items.drop_duplicates("clip_item_id").set_index("clip_item_id").loc[clips].reset_index()
    clip_rows["item_id"] = clip_rows["clip_item_id"]
    return clip_rows, clip_proba


def train_audio(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit ``cfg.audio`` on the train part, early-stop on val, report on test (per clip).

    Writes the run folder (history, checkpoint, metrics, report, confusion, model card,
    ``input_problems.csv`` for audio that failed) and ``predictions.csv`` for val and test
    clips. With ``audio.reference: logreg`` a scikit-learn logistic regression on the same
    features and split is reported beside it (``reference_logreg/``) with the paired
    accuracy difference. Returns the test metrics.
    """
    branch = cfg.audio
    model_cfg = OmegaConf.to_container(branch.model, resolve=True)
    kinds = MODEL_INPUTS.get(model_cfg.get("kind"), ())
    prepared = prepare_from_config(cfg, branch.data, run_dir)
    n_segments = branch.data.get("segments")
    items = segment_items(prepared.items, n_segments) if n_segments else prepared.items
    inputs = audio_inputs(items, kinds, cfg.paths.cache_dir, n_jobs=branch.get("n_jobs", 1),
                          progress=cfg.trainer.progress)
    if len(inputs.problems):
        inputs.problems.to_csv(run_dir / "input_problems.csv", index=False)
        log.warning("%d audio items failed (listed in %s)", len(inputs.problems), run_dir / "input_problems.csv")
    train, val, test = (inputs.subset((inputs.items["split"] == p).to_numpy()) for p in ("train", "val", "test"))
    labels = prepared.labels
    config = trainer_config(cfg, branch.trainer, train_targets=train.items["y"], n_classes=len(labels))
    seed_everything(config.seed)
    model = build_audio_model(model_cfg, len(labels))
    mlp = model.mlp if isinstance(model, HybridNet) else model
    if isinstance(mlp, FeatureMLP):
        mlp.fit_standardiser(train.arrays["features"])
    input_spec = {"kinds": list(kinds), "segments": n_segments, "mel": MelParams().as_dict(), "mel_frames": MEL_FRAMES}
    card = {"branch": "audio", "model": branch.name, "data": branch.data.name, **prepared.describe(),
            "split_name": prepared.split_path.stem, "inputs": input_spec, "input_problems": len(inputs.problems),
            "class_weights": config.class_weights, "config": OmegaConf.to_container(branch, resolve=True)}
    title = f"audio {branch.name} · {branch.data.name} · split {prepared.split_path.stem}"
    if n_segments:
        title += f" · {n_segments} segments/clip, clip = mean of segments"
    if config.class_weights:
        title += " · class-weighted"
    metrics, test_proba, _ = train_evaluate(
        model, train.dataset(kinds), val.dataset(kinds), test.dataset(kinds), test.items["y"].to_numpy(), labels,
        config, run_dir, title=title, card=card,
        test_groups=test.items["clip_item_id"].tolist() if n_segments else None,
        checkpoint_metadata={"model": model_cfg, "inputs": input_spec},
    )
    held_items, held_proba = _held_out_predictions(model, inputs, kinds, config.device, bool(n_segments))
    write_branch_outputs(run_dir, held_items, held_proba, labels)
    if branch.get("reference") == "logreg":
        if n_segments:
            raise ValueError("audio.reference=logreg compares per-clip feature models; drop it for segment models")
        metrics["reference_logreg"] = _logreg_reference(train, test, labels, run_dir, card, config.seed,
                                                        test_proba.argmax(1))
        add_to_metrics(run_dir, reference_logreg=metrics["reference_logreg"])
    return metrics


def _logreg_reference(train: AudioInputs, test: AudioInputs, labels: list[str], run_dir: Path,
                      card: dict[str, Any], seed: int, model_predictions: np.ndarray) -> dict[str, Any]:
    """scikit-learn's standardised logistic regression on the same features and test items."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    reference, proba = evaluate_estimator(
        estimator, train.arrays["features"], train.items["y"].to_numpy(), test.arrays["features"],
        test.items["y"].to_numpy(), labels, run_dir / "reference_logreg",
        title=f"reference: scikit-learn logistic regression · split {card['split_name']}", card=card, seed=seed,
    )
    summary = {k: reference[k] for k in ("n", "accuracy", "ci95")}
    summary["model_minus_reference"] = paired_accuracy_difference(test.items["y"], model_predictions,
                                                                  proba.argmax(1), seed=seed)
    return summary
