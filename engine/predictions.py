"""The predictions table: one row per item, its predicted class and one ``p_<class>`` column per class.

Every branch writes its held-out predictions in this form (``predictions.csv``, the branch's
only interface to fusion), and so do fusion, cover evaluation and batch scoring. A row whose
probabilities are all missing (NaN) is an item that modality could not score.
"""
from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.io import atomic_path

PREFIX = "p_"
FILE_NAME = "predictions.csv"


def probability_columns(labels: Sequence[str]) -> list[str]:
    """``["p_rap", "p_country", …]`` in class order."""
    return [f"{PREFIX}{label}" for label in labels]


def labels_of(table: pd.DataFrame) -> list[str]:
    """The class order of a predictions table, read from its ``p_<class>`` columns."""
    return [column[len(PREFIX):] for column in table.columns if column.startswith(PREFIX)]


def present(proba: np.ndarray) -> np.ndarray:
    """Rows of ``(n, k)`` probabilities that hold a prediction (no NaN): the modality's presence mask."""
    return ~np.isnan(proba).any(axis=1)


def with_predictions(items: pd.DataFrame, proba: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """``items`` (index dropped) plus ``predicted`` and one ``p_<class>`` column per class.

    A row without a prediction (NaN probabilities) gets an empty ``predicted``.
    """
    proba = np.asarray(proba, dtype=float)
    if proba.shape != (len(items), len(labels)):
        raise ValueError(f"probabilities of shape {proba.shape} for {len(items)} items and {len(labels)} classes")
    table = items.reset_index(drop=True).copy()
    has = present(proba)
    table["predicted"] = [labels[i] if ok else "" for i, ok in zip(proba.argmax(1) if len(proba) else [], has)]
    for column, values in zip(probability_columns(labels), proba.T):
        table[column] = values
    return table


def write_predictions(path: str | Path, items: pd.DataFrame, proba: np.ndarray, labels: Sequence[str]) -> Path:
    """Write :func:`with_predictions` as CSV, atomically. Returns the path."""
    path = Path(path)
    with atomic_path(path) as temporary:
        with_predictions(items, proba, labels).to_csv(temporary, index=False)
    return path


def predictions_file(run: str | Path) -> Path:
    """A run folder's predictions table: ``predictions.csv``, or ``predictions.csv.gz`` where a run was
    committed compressed (results/); a file path is returned as it is, or as its ``.gz`` where only that
    exists."""
    run = Path(run)
    plain = run / FILE_NAME if run.is_dir() else run
    compressed = plain.with_name(f"{plain.name}.gz")
    return compressed if not plain.is_file() and compressed.is_file() else plain


def predictions_content(run: str | Path) -> bytes:
    """The predictions table's bytes as written (decompressed where it was committed compressed)."""
    path = predictions_file(run)
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def read_predictions(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """A predictions table (a run folder or the CSV itself, gzip-compressed or not) and its class order."""
    path = predictions_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no predictions at {path}; train or score first")
    table = pd.read_csv(path, dtype={"item_id": str, "label": str, "predicted": str}, keep_default_na=False)
    labels = labels_of(table)
    if not labels:
        raise ValueError(f"{path} has no {PREFIX}<class> columns: not a predictions table")
    return table, labels


def probabilities(table: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """The ``(n, k)`` probability matrix of a predictions table (empty cells become NaN)."""
    return table[probability_columns(labels)].replace("", np.nan).to_numpy(dtype=float)


def compare_runs(runs: Sequence[str | Path]) -> dict:
    """Two or more runs' test predictions on their common test items: each run's accuracy with its interval,
    and the first minus each other with a paired bootstrap interval and McNemar's exact test.

    ``runs``: run folders (or ``predictions.csv`` files) of one label set. Raises ``ValueError`` when the
    label sets differ or no test item is common (different splits or data)."""
    from engine.report import evaluate_predictions, mcnemar, paired_accuracy_difference

    tables, label_orders = [], []
    for run in runs:
        table, labels = read_predictions(run)
        tables.append(table[table["split"] == "test"].set_index("item_id"))
        label_orders.append(labels)
    if any(order != label_orders[0] for order in label_orders):
        raise ValueError(f"the runs have different label sets: {label_orders}")
    labels = label_orders[0]
    common = sorted(set.intersection(*(set(t.index) for t in tables)))
    if not common:
        raise ValueError("the runs share no test items (different splits or data)")
    y = tables[0].loc[common, "y"].astype(int).to_numpy()
    predicted = [t.loc[common, "predicted"].map({label: i for i, label in enumerate(labels)}).to_numpy() for t in tables]
    result: dict = {"n_common_test_items": len(common), "runs": {}, "first_minus_other": {}}
    for run, pred in zip(runs, predicted):
        metrics = evaluate_predictions(y, pred, labels)
        result["runs"][str(run)] = {"accuracy": metrics["accuracy"], "ci95": metrics["ci95"]["accuracy"]}
    for run, pred in zip(runs[1:], predicted[1:]):
        result["first_minus_other"][str(run)] = {"difference": paired_accuracy_difference(y, predicted[0], pred),
                                                 "mcnemar": mcnemar(y, predicted[0], pred)}
    return result
