"""Run folders: machine description, model card, and the train → test → report sequence every model uses."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from engine.report import evaluate_predictions, write_json, write_report
from engine.trainer import FitResult, TrainerConfig, fit, predict_proba

log = logging.getLogger(__name__)


def machine_info() -> dict[str, Any]:
    """What ran this: CPU, cores, GPU, OS, Python and key package versions."""
    versions = {}
    for package in ("torch", "torchvision", "numpy", "scikit-learn", "librosa", "pandas"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions, "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_model_card(run_dir: str | Path, **fields: Any) -> None:
    """``model_card.json``: data, label set, protocol, pairing, metrics with intervals, machine, versions."""
    write_json(Path(run_dir) / "model_card.json", {**fields, "machine": machine_info()})


def train_evaluate(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    test_set: Dataset,
    y_test: Sequence[int],
    labels: Sequence[str],
    trainer_config: TrainerConfig,
    run_dir: str | Path,
    title: str,
    card: dict[str, Any],
    test_groups: Sequence[str] | None = None,
    checkpoint_metadata: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], np.ndarray, FitResult]:
    """Fit, predict the test set with the best weights, write the report and model card.

    With ``test_groups`` (e.g. the parent clip of each 3-second segment) the test items'
    probabilities are averaged per group and the report is on groups; the item-level accuracy
    is kept as ``item_accuracy``. ``checkpoint_metadata`` is stored in the checkpoint beside the
    labels (what a scorer needs to rebuild the model and its inputs).
    Returns ``(metrics, test_probabilities, fit_result)`` (probabilities per item, not per group).
    """
    run_dir = Path(run_dir)
    result = fit(model, train_set, val_set, trainer_config, run_dir,
                 metadata={"labels": list(labels), "card": card, **(checkpoint_metadata or {})})
    proba = predict_proba(model, test_set, device=trainer_config.device)
    extra: dict[str, Any] = {}
    y_eval, proba_eval = np.asarray(y_test), proba
    if test_groups is not None:
        extra["item_accuracy"] = float((proba.argmax(1) == y_eval).mean())
        extra["aggregated_over"] = "mean probability of each group's items"
        _, y_eval, proba_eval = mean_by_group(test_groups, y_eval, proba)
    metrics = evaluate_predictions(y_eval, proba_eval.argmax(1), labels, seed=trainer_config.seed)
    metrics.update(extra)
    training = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early, "seconds": round(result.seconds, 2)}
    write_report(run_dir, metrics, title=title, extra={"training": training, **card})
    write_model_card(run_dir, **card, trainer=asdict(trainer_config), training=training,
                     metrics={k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "ci95")})
    log.info("%s: accuracy %.4f (95%% CI %.4f–%.4f), report in %s", title, metrics["accuracy"],
             *metrics["ci95"]["accuracy"], run_dir)
    return metrics, proba, result


def mean_by_group(groups: Sequence[str], y: Sequence[int], proba: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Average item probabilities per group (first-seen order); a group's items share one label.

    Returns ``(group_ids, y_per_group, proba_per_group)``.
    """
    frame = pd.DataFrame(proba).assign(_group=list(groups), _y=np.asarray(y))
    if (frame.groupby("_group", sort=False)["_y"].nunique() > 1).any():
        raise ValueError("items of one group carry different labels; cannot aggregate")
    grouped = frame.groupby("_group", sort=False)
    return list(grouped.groups), grouped["_y"].first().to_numpy(), grouped[list(range(proba.shape[1]))].mean().to_numpy()


def evaluate_estimator(
    estimator: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    labels: Sequence[str],
    run_dir: str | Path,
    title: str,
    card: dict[str, Any],
    seed: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """The scikit-learn counterpart of :func:`train_evaluate`: ``fit`` → ``predict_proba`` → the same report.

    The fitted estimator is saved as ``model.joblib``. Returns ``(metrics, test_probabilities)``
    with one column per entry of ``labels`` (a class absent from training gets probability 0).
    """
    import joblib

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    estimator.fit(x_train, y_train)
    seconds = time.perf_counter() - started
    proba = np.zeros((len(x_test), len(labels)))
    proba[:, estimator.classes_] = estimator.predict_proba(x_test)
    metrics = evaluate_predictions(y_test, proba.argmax(1), labels, seed=seed)
    write_report(run_dir, metrics, title=title, extra={"training": {"seconds": round(seconds, 2)}, **card})
    write_model_card(run_dir, **card, estimator=repr(estimator),
                     metrics={k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "ci95")})
    joblib.dump(estimator, run_dir / "model.joblib")
    return metrics, proba
