"""Run folders: machine description, model card, and the train → test → report sequence every model uses."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
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
) -> tuple[dict[str, Any], np.ndarray, FitResult]:
    """Fit, predict the test set with the best weights, write the report and model card.

    Returns ``(metrics, test_probabilities, fit_result)``.
    """
    run_dir = Path(run_dir)
    result = fit(model, train_set, val_set, trainer_config, run_dir,
                 metadata={"labels": list(labels), "card": card})
    proba = predict_proba(model, test_set, device=trainer_config.device)
    metrics = evaluate_predictions(y_test, proba.argmax(1), labels, seed=trainer_config.seed)
    training = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early, "seconds": round(result.seconds, 2)}
    write_report(run_dir, metrics, title=title, extra={"training": training, **card})
    write_model_card(run_dir, **card, trainer=asdict(trainer_config), training=training,
                     metrics={k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "ci95")})
    log.info("%s: accuracy %.4f (95%% CI %.4f–%.4f), report in %s", title, metrics["accuracy"],
             *metrics["ci95"]["accuracy"], run_dir)
    return metrics, proba, result
