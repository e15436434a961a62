"""Run folders: machine description, model card, and the fit → held-out predictions → report sequence
every model (torch or scikit-learn) goes through."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from engine.inference import BEST_CHECKPOINT, save_checkpoint
from engine.io import write_json
from engine.predictions import write_predictions
from engine.report import evaluate_predictions, headline, write_report
from engine.trainer import TrainerConfig, fit

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


#: Set by whoever copies the tree to another machine (a lent GPU machine): the copy may have no .git, or a
#: stale one (seen: a copy whose .git still named the commit its session started from).
COMMIT_ENV_VAR = "GENREFUSION_COMMIT"


def _git_commit() -> str | None:
    """The checkout's short commit, ``+changes`` when tracked files other than benchmark results differ
    from it (the numbers were then measured on code that commit does not hold); None outside git.
    ``$GENREFUSION_COMMIT``, when set, is the answer: the sender of a copied tree knows what it sent."""
    if os.environ.get(COMMIT_ENV_VAR):
        return os.environ[COMMIT_ENV_VAR]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=5).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = commit and git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                 ":(top,exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        commit, changed = "", ""
    return (commit + ("+changes" if changed else "")) or None


def write_model_card(run_dir: str | Path, **fields: Any) -> None:
    """``model_card.json``: data, label set, protocol, pairing, metrics with intervals, machine, versions."""
    write_json(Path(run_dir) / "model_card.json", {**fields, "machine": machine_info()})


#: Columns of a branch's ``predictions.csv`` besides ``predicted`` and the class probabilities.
PREDICTION_COLUMNS = ["item_id", "split", "label", "y", "group"]


def report_held_out(run_dir: str | Path, held: pd.DataFrame, proba: np.ndarray, labels: Sequence[str], title: str,
                    card: dict[str, Any], seed: int = 0, extra: dict[str, Any] | None = None,
                    predictions: bool = True) -> dict[str, Any]:
    """The one report of a trained model: test metrics, report files, model card, held-out predictions.

    ``held`` holds the validation and test items (columns ``item_id, split, label, y, group``) and
    ``proba`` their class probabilities from the branch's predict path. The report is on the
    ``test`` rows; ``predictions.csv`` (what fusion reads) gets every held row. ``extra`` is
    added to ``metrics.json`` and the model card (training record, item-level accuracy, …).
    Returns the test metrics.
    """
    run_dir = Path(run_dir)
    test = (held["split"] == "test").to_numpy()
    if not test.any():
        raise ValueError(f"{title}: no test items to report on")
    metrics = evaluate_predictions(held["y"].to_numpy()[test], proba[test].argmax(1), labels, seed=seed)
    metrics.update(extra or {})
    write_report(run_dir, metrics, title=title, extra=card)
    write_model_card(run_dir, **card, **(extra or {}), metrics=headline(metrics))
    if predictions:
        write_predictions(run_dir / "predictions.csv", held[PREDICTION_COLUMNS], proba, labels)
    log.info("%s: accuracy %.4f (95%% CI %.4f–%.4f), report in %s", title, metrics["accuracy"],
             *metrics["ci95"]["accuracy"], run_dir)
    return metrics


def held_out(items: pd.DataFrame) -> np.ndarray:
    """Mask of the validation and test items (what a branch predicts for fusion)."""
    return items["split"].isin(["val", "test"]).to_numpy()


def train_and_report(model: nn.Module, train_set: Dataset, val_set: Dataset, trainer_config: TrainerConfig,
                     run_dir: str | Path, labels: Sequence[str], title: str, card: dict[str, Any],
                     predict_held_out: Callable[[nn.Module], tuple[pd.DataFrame, np.ndarray, dict[str, Any]]],
                     checkpoint_metadata: dict[str, Any] | None = None
                     ) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """Fit with the one trainer, predict the held-out items through the branch's predict path, report.

    ``predict_held_out(model)`` returns ``(held items, probabilities, extra metrics)``, the
    model carrying its best weights. ``checkpoint_metadata`` is stored in the checkpoint beside
    the labels and card (what a predict path needs to rebuild the model and its inputs).
    Returns ``(test metrics, held items, their probabilities)``.
    """
    result = fit(model, train_set, val_set, trainer_config, run_dir,
                 metadata={"labels": list(labels), "card": card, **(checkpoint_metadata or {})})
    held, proba, extra = predict_held_out(model)
    kept = result.history[result.history["epoch"] == result.best_epoch]
    training = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early, "seconds": round(result.seconds, 2),
                # the kept epoch's validation figures: what a sweep chooses settings by
                "val_loss": float(kept["val_loss"].iloc[0]) if len(kept) else None,
                "val_acc": float(kept["val_acc"].iloc[0]) if len(kept) else None}
    metrics = report_held_out(run_dir, held, proba, labels, title, {**card, "trainer": asdict(trainer_config)},
                              seed=trainer_config.seed, extra={"training": training, **extra})
    return metrics, held, proba


def report_fixed_model(model: nn.Module, run_dir: str | Path, labels: Sequence[str], title: str,
                       card: dict[str, Any],
                       predict_held_out: Callable[[nn.Module], tuple[pd.DataFrame, np.ndarray, dict[str, Any]]],
                       checkpoint_metadata: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """A model that is not trained (zero-shot): its checkpoint, then the same report as a trained one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model_state": model.state_dict(), "labels": list(labels), "card": card,
                     **(checkpoint_metadata or {})}, run_dir / BEST_CHECKPOINT)
    held, proba, extra = predict_held_out(model)
    return report_held_out(run_dir, held, proba, labels, title, card, seed=seed,
                           extra={"training": "none (zero-shot)", **extra})


def all_class_proba(estimator: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """A fitted scikit-learn classifier's ``(n, n_classes)`` probabilities of ``x``, with a zero column for
    a class absent from its training targets (targets are class indices 0 … n_classes − 1)."""
    proba = np.zeros((len(x), n_classes))
    proba[:, estimator.classes_] = estimator.predict_proba(x)
    return proba


def fit_estimator_and_report(estimator: Any, x_train: np.ndarray, y_train: np.ndarray, held: pd.DataFrame,
                             x_held: np.ndarray, labels: Sequence[str], run_dir: str | Path, title: str,
                             card: dict[str, Any], seed: int = 0,
                             predictions: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """The scikit-learn counterpart of :func:`train_and_report`: ``fit`` → ``predict_proba`` → the same report.

    The fitted estimator is saved as ``model.joblib`` (a pickle: load only files you made; no
    genrefusion predict path reads it). Returns ``(test metrics, held-out probabilities)`` with
    one column per entry of ``labels`` (a class absent from training gets probability 0).
    """
    import joblib

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    estimator.fit(x_train, y_train)
    seconds = time.perf_counter() - started
    proba = all_class_proba(estimator, x_held, len(labels))
    metrics = report_held_out(run_dir, held, proba, labels, title, {**card, "estimator": repr(estimator)}, seed=seed,
                              extra={"training": {"seconds": round(seconds, 2)}}, predictions=predictions)
    joblib.dump(estimator, run_dir / "model.joblib")
    return metrics, proba
