"""Train and report an audio model (any kind in :data:`audio.models.AUDIO_MODELS`).

Data flow: clip items → split saved on clips → windows (whole clips, or 3-second segments that
inherit their clip's part) → inputs (features and/or log-mels, cached) → the shared trainer →
held-out predictions through the branch's predict path → a report on clips (segment
probabilities averaged per clip) → ``predictions.csv`` for fusion.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from torch import nn

from audio.feature_mlp import FeatureMLP, log_columns
from audio.models import HybridNet, build_audio_model, feature_columns, model_kind
from audio.predict import (AudioInputs, AudioModel, audio_inputs, audio_windows, input_spec, needs_audio_files,
                           predict_audio_inputs)
from data.config import prepare_from_config
from data.items import missing_modality
from data.prepare import PreparedData
from engine.report import add_to_metrics, paired_accuracy_difference
from engine.run import fit_estimator_and_report, held_out, report_fixed_model, train_and_report
from engine.selection import train_with_selection
from engine.settings import trainer_config
from engine.trainer import seed_everything

log = logging.getLogger(__name__)


#: What ``audio.reference`` may name: nothing, or scikit-learn's logistic regression on the same inputs.
REFERENCES = (None, "logreg")


def check_audio_config(cfg: DictConfig) -> None:
    """Refuse now what :func:`train_audio` would refuse after extracting its inputs (minutes of audio
    decoding for a catalogue) or after training: the model kind and its layer sizes, the trainer
    settings and the reference."""
    branch = cfg.audio
    model_cfg = OmegaConf.to_container(branch.model, resolve=True)
    labels = list(cfg.labels.classes)
    build_audio_model(model_cfg, labels)
    # One stand-in target per class: balanced class weights are computed from the real ones at training.
    trainer_config(cfg, branch.get("trainer"), train_targets=range(len(labels)), n_classes=len(labels))
    reference = branch.get("reference")
    if reference not in REFERENCES:
        raise ValueError(f"audio.reference must be null or logreg, got {reference!r}")
    if reference == "logreg" and branch.get("segments"):
        raise ValueError("audio.reference=logreg compares per-clip feature models; drop it for segment models "
                         "(audio.segments is set)")


def train_audio(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit ``cfg.audio`` on the train part, early-stop on val, report on test (per clip).

    Writes the run folder (history, checkpoint, metrics, report, confusion, model card,
    ``input_problems.csv`` for audio that failed) and ``predictions.csv`` for val and test
    clips. With ``audio.reference: logreg`` a scikit-learn logistic regression on the same
    features and split is reported beside it (``reference_logreg/``) with the paired
    accuracy difference. With ``audio.select``, each candidate is trained so and the best on
    validation kept (:func:`engine.selection.train_with_selection`). Returns the test metrics.
    """
    if cfg.audio.get("select"):
        return train_with_selection(cfg, "audio", run_dir, train_audio, check=check_audio_config)
    check_audio_config(cfg)
    branch = cfg.audio
    model_cfg = OmegaConf.to_container(branch.model, resolve=True)
    prepared, inputs, spec = audio_branch_inputs(cfg, run_dir)
    kinds, n_segments = tuple(spec["kinds"]), spec["segments"]
    train, val, test = (inputs.subset((inputs.items["split"] == p).to_numpy()) for p in ("train", "val", "test"))
    labels = prepared.labels
    config = trainer_config(cfg, branch.trainer, train_targets=train.items["y"], n_classes=len(labels))
    seed_everything(config.seed)
    network = build_audio_model(model_cfg, labels)
    mlp = network.mlp if isinstance(network, HybridNet) else network
    if isinstance(mlp, FeatureMLP):  # standardised on the training rows of the vector input it reads
        mlp.fit_standardiser(train.arrays["features" if isinstance(network, HybridNet) else kinds[0]])
    card = {"branch": "audio", "model": branch.name, "data": prepared.name, **prepared.describe(),
            "split_name": prepared.split_path.stem, "inputs": spec, "input_problems": len(inputs.problems),
            "class_weights": config.class_weights, "config": OmegaConf.to_container(branch, resolve=True)}
    title = f"audio {branch.name} · {prepared.name} · split {prepared.split_path.stem}"
    if n_segments:
        title += f" · {n_segments} segments/clip, clip = mean of segments"
    if config.class_weights:
        title += " · class-weighted"
    model = AudioModel(network, labels, spec)
    held = inputs.subset(held_out(inputs.items))

    def predict_held_out(_: nn.Module):
        clips, clip_proba, window_proba = predict_audio_inputs(model, held, config.device)
        if not n_segments:
            return clips, clip_proba, {}
        test = (held.items["split"] == "test").to_numpy()
        item_accuracy = float((window_proba[test].argmax(1) == held.items["y"].to_numpy()[test]).mean())
        return clips, clip_proba, {"item_accuracy": item_accuracy,
                                   "aggregated_over": "mean probability of each clip's segments"}

    checkpoint_metadata = {"model": model_cfg, "inputs": spec}
    if not model_kind(model_cfg).trainable:
        return report_fixed_model(network, run_dir, labels, title + " · zero-shot", card, predict_held_out,
                                  checkpoint_metadata, seed=config.seed)
    metrics, clips, clip_proba = train_and_report(network, train.dataset(kinds), val.dataset(kinds), config, run_dir,
                                                  labels, title, card, predict_held_out, checkpoint_metadata)
    if branch.get("reference") == "logreg":
        test_clips = (clips["split"] == "test").to_numpy()
        log_mask = (mlp.log_mask.cpu().numpy() if isinstance(mlp, FeatureMLP)
                    else np.zeros(train.arrays[kinds[0]].shape[1], dtype=bool))
        metrics["reference_logreg"] = _logreg_reference(train, test, kinds[0], labels, run_dir, card, config.seed,
                                                        clip_proba[test_clips].argmax(1), log_mask)
        add_to_metrics(run_dir, reference_logreg=metrics["reference_logreg"])
    return metrics


def audio_branch_inputs(cfg: DictConfig, run_dir: Path) -> tuple[PreparedData, AudioInputs, dict[str, Any]]:
    """``cfg.audio``'s items and split, the inputs of every window its model reads (cached), and their spec.

    Windows whose audio failed are left out and listed in ``run_dir/input_problems.csv``.
    """
    branch = cfg.audio
    model_cfg = OmegaConf.to_container(branch.model, resolve=True)
    kind = model_kind(model_cfg)
    features = feature_columns(model_cfg)
    musicnn = list(model_cfg.get("musicnn") or [])
    prepared = prepare_from_config(cfg, branch, run_dir)
    items, no_audio = prepared.items, None
    if needs_audio_files(kind.inputs, items, features):
        items, no_audio = missing_modality(items, "audio_path", "audio")
    inputs = audio_inputs(audio_windows(items, branch.get("segments")), kind.inputs, cfg.paths.cache_dir,
                          n_jobs=branch.get("n_jobs", 1), progress=cfg.trainer.progress, features=features,
                          musicnn=musicnn, min_seconds=kind.min_seconds)
    if no_audio is not None and len(no_audio):
        inputs.problems = pd.concat([no_audio, inputs.problems], ignore_index=True)
    if len(inputs.problems):
        inputs.problems.to_csv(run_dir / "input_problems.csv", index=False)
        log.warning("%d audio items failed (listed in %s)", len(inputs.problems), run_dir / "input_problems.csv")
    return prepared, inputs, input_spec(kind.inputs, branch.get("segments"), features, musicnn, kind.min_seconds)


def sklearn_on_model_inputs(estimator: Any, log_mask: np.ndarray) -> Any:
    """``estimator`` behind the feature MLP's own input steps: the ``log_mask`` columns on a log scale
    (when any), then standardisation fitted on the training rows."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    steps = [StandardScaler(), estimator]
    if log_mask.any():
        steps.insert(0, FunctionTransformer(log_columns, kw_args={"mask": log_mask}))
    return make_pipeline(*steps)


def _logreg_reference(train: AudioInputs, test: AudioInputs, kind: str, labels: list[str], run_dir: Path,
                      card: dict[str, Any], seed: int, model_predictions: np.ndarray,
                      log_mask: np.ndarray) -> dict[str, Any]:
    """scikit-learn's standardised logistic regression on the same vector input (``kind``) and test items,
    with the columns the model reads on a log scale (``log_mask``) on that scale too."""
    from sklearn.linear_model import LogisticRegression

    title = "reference: scikit-learn logistic regression"
    if log_mask.any():
        title += " · variances on a log scale"
    reference, proba = fit_estimator_and_report(
        sklearn_on_model_inputs(LogisticRegression(max_iter=5000), log_mask), train.arrays[kind],
        train.items["y"].to_numpy(), test.items, test.arrays[kind], labels, run_dir / "reference_logreg",
        title=f"{title} · split {card['split_name']}", card=card, seed=seed,
    )
    summary = {**{k: reference[k] for k in ("n", "accuracy", "ci95")}, "log_columns": int(log_mask.sum())}
    summary["model_minus_reference"] = paired_accuracy_difference(test.items["y"], model_predictions,
                                                                  proba.argmax(1), seed=seed)
    return summary
