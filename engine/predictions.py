"""The predictions table: one row per item, its predicted class and one ``p_<class>`` column per class.

Every branch writes its held-out predictions in this form (``predictions.csv``, the branch's
only interface to fusion), and so do fusion, cover evaluation and batch scoring. A row whose
probabilities are all missing (NaN) is an item that modality could not score.
"""
from __future__ import annotations

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


def read_predictions(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """A predictions table (a run folder or the CSV itself) and its class order."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
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
