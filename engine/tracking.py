"""Experiment tracking: a finished run folder logged to MLflow, so runs can be sorted and compared in ``mlflow ui``.

The run folder is the record; tracking copies it into MLflow after the run has written everything, so a
tracking failure (a locked database, a missing package) costs a warning, never the run's work. What is logged:

- parameters: the composed config, flattened (``audio.trainer.lr``; lists as JSON);
- per-epoch history: every kept model's ``history.csv`` (candidates and cross-fitting folds left out), as
  ``<folder>/<column>`` with the epoch as step (``fold-0/audio/val_loss``);
- final metrics: each branch folder's ``metrics.json`` headline (``audio/accuracy``, ``audio/accuracy_low``,
  ``…_high``), and the rows the run prints (``results.json``) by role: ``majority_accuracy``,
  ``image_only_accuracy``, ``audio_only_accuracy``, ``fused_accuracy`` (the last fused row: the head the run
  tests), each with ``_balanced_accuracy``, ``_macro_f1`` and the intervals' ``_low`` / ``_high``;
- artifacts: the figures, ``model_card.json`` and ``metrics.json`` files, the selections and folds summaries
  and the config.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("genrefusion")

#: The tracking backends: ``tracking=mlflow`` (the default) or ``tracking=none``.
BACKENDS = ("mlflow", "none")
#: Folders whose models are not the run's own (trained only to be chosen from, or to fit the fusion head).
SKIPPED_FOLDERS = frozenset({"candidates", "crossfit"})
#: MLflow's limits: values of one parameter, entries of one ``log_batch`` call.
PARAM_VALUE_LIMIT, BATCH_LIMIT = 6000, 1000
#: Artifacts logged from the run folder (besides ``.hydra/config.yaml``).
ARTIFACT_PATTERNS = ("*.png", "model_card.json", "metrics.json", "metrics_pairing-*.json", "selections.md",
                     "folds.md")


def flatten_config(node: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` → ``{"a.b": "1", "c": "[1, 2]"}``: every leaf as a string."""
    if isinstance(node, dict):
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    text = json.dumps(node) if isinstance(node, list) else str(node)
    return {prefix.rstrip("."): text[:PARAM_VALUE_LIMIT]}


def role(row_name: str) -> str:
    """The metric prefix of a printed row: majority, image_only, audio_only or fused; a k-fold run without
    fusion prints a row per fold (``… · fold 2``), whose prefix names the fold (``fold-2/audio_only``)."""
    fold = re.search(r" · fold (\d+)$", row_name)
    for start, prefix in (("majority", "majority"), ("image-only", "image_only"), ("covers-only", "image_only"),
                          ("audio-only", "audio_only"), ("fused", "fused")):
        if row_name.startswith(start):
            return f"fold-{fold.group(1)}/{prefix}" if fold else prefix
    return "".join(c if c.isalnum() else "_" for c in row_name.split(" (")[0]).strip("_")


def headline_metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    """``accuracy``, ``balanced_accuracy``, ``macro_f1`` (and log-loss / ECE where present) with their
    intervals' bounds, under ``prefix``."""
    values = {}
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece"):
        if isinstance(metrics.get(name), (int, float)):
            values[f"{prefix}{name}"] = float(metrics[name])
        interval = (metrics.get("ci95") or {}).get(name)
        if interval:
            values[f"{prefix}{name}_low"], values[f"{prefix}{name}_high"] = map(float, interval)
    return values


def final_metrics(run_dir: Path, rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The run's final numbers: every kept branch folder's ``metrics.json`` and the rows the run prints."""
    values: dict[str, float] = {}
    for path in _kept(run_dir, "metrics.json"):
        values.update(headline_metrics(f"{path.parent.relative_to(run_dir).as_posix()}/", json.loads(path.read_text())))
    # The printed rows in order: the last of a role is the one the run tests (the cross-fitted head).
    for name, row in rows.items():
        values.update(headline_metrics(f"{role(name)}_", row))
    return values


def history_points(run_dir: Path) -> Iterator[tuple[str, float, int]]:
    """``(metric, value, epoch)`` for every numeric column of every kept model's ``history.csv``."""
    for path in _kept(run_dir, "history.csv"):
        folder = path.parent.relative_to(run_dir).as_posix()
        history = pd.read_csv(path)
        for column in history.columns.drop("epoch", errors="ignore"):
            for epoch, value in zip(history["epoch"], history[column]):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    yield f"{folder}/{column}", float(value), int(epoch)


def _kept(run_dir: Path, name: str) -> list[Path]:
    return sorted(path for path in run_dir.rglob(name)
                  if not SKIPPED_FOLDERS & set(path.relative_to(run_dir).parts))


def log_run(run_dir: Path, config: dict[str, Any], rows: dict[str, dict[str, Any]], *, uri: str, experiment: str,
            run_name: str, tags: dict[str, str] | None = None) -> str:
    """Log a finished run folder and the rows it prints to MLflow (see the module's docstring); returns the
    MLflow run id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "creating initial database tables" on every new store
    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, experiment, _artifact_root(uri))
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"run_dir": str(run_dir), **(tags or {})})
    run_id = run.info.run_id
    try:
        params = [Param(key, value) for key, value in flatten_config(config).items()]
        finals = [Metric(key, value, 0, 0) for key, value in final_metrics(run_dir, rows).items()]
        history = [Metric(key, value, 0, step) for key, value, step in history_points(run_dir)]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(run_id, params=params[start:start + 100])
        for batch in (finals, history):
            for start in range(0, len(batch), BATCH_LIMIT):
                client.log_batch(run_id, metrics=batch[start:start + BATCH_LIMIT])
        client.log_batch(run_id, tags=[RunTag("n_history_points", str(len(history)))])
        for path in _artifacts(run_dir):
            folder = path.parent.relative_to(run_dir).as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def _artifacts(run_dir: Path) -> list[Path]:
    found = {path for pattern in ARTIFACT_PATTERNS for path in _kept(run_dir, pattern)}
    config = run_dir / ".hydra" / "config.yaml"
    return sorted(found | ({config} if config.is_file() else set()))


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a file store (``sqlite:///…/mlflow.db`` → ``…/mlflow-artifacts``), not in the working
    directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlflow-artifacts").resolve().as_uri()
    return None


def _experiment_id(client: Any, name: str, artifact_root: str | None) -> str:
    """The experiment named ``name``, created on first use (a sweep's parallel runs may race to create it)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        location = f"{artifact_root}/{name.replace('/', '_')}" if artifact_root else None
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def sqlite_uri(path: Path) -> str:
    """The tracking URI of a sqlite store at ``path`` (made absolute: runs may start in other directories)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def check_tracking(settings: DictConfig) -> None:
    """A misspelt backend is an error before anything trains (not a warning after the run)."""
    if settings.backend not in BACKENDS:
        raise ValueError(f"tracking.backend must be one of {list(BACKENDS)}, got {settings.backend!r}")


def track_run(cfg: DictConfig, run_dir: Path, rows: dict[str, dict[str, Any]]) -> str | None:
    """Log the finished ``run_dir`` and the ``rows`` it prints as ``cfg.tracking`` says; returns the MLflow
    run id (None: not tracked).

    Its experiment: ``tracking.experiment``, else the experiment config's name, else the task's; every run of
    a Hydra sweep goes to one experiment named after the sweep's folder. A failure is a warning: the run
    folder is already complete.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from engine.run import _git_commit

    settings = cfg.tracking
    if settings.backend == "none":
        return None
    hydra = HydraConfig.get()
    output_dir = Path(cfg.paths.output_dir)
    if hydra.mode == RunMode.MULTIRUN:
        experiment = settings.experiment or f"sweep {_relative(Path(hydra.sweep.dir), output_dir)}"
    else:
        experiment = settings.experiment or cfg.get("experiment_name") or cfg.task
    uri = settings.uri or sqlite_uri(output_dir / "mlflow.db")
    try:
        with _store_lock(uri):
            run_id = log_run(run_dir, OmegaConf.to_container(cfg, resolve=True), rows, uri=uri,
                             experiment=str(experiment), run_name=_relative(run_dir, output_dir),
                             tags={"git_commit": str(_git_commit())})
    except Exception as error:  # the run's work is on disk; tracking is a copy of it
        log.warning("MLflow tracking failed (%s: %s); the run folder %s is complete", type(error).__name__, error,
                    run_dir)
        return None
    log.info("Tracked in MLflow: experiment %r, run %s (mlflow ui --backend-store-uri %s)", experiment, run_id, uri)
    return run_id


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """One writer at a time on a sqlite store: a sweep's parallel runs would otherwise race to create its
    tables (MLflow's migrations are not safe to run twice at once)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(uri.removeprefix("sqlite:///") + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however the process ends
        yield


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)
