"""Glue every branch shares: config → prepared data, and branch outputs written for fusion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from data.prepare import PreparedData, prepare_items
from engine.config import split_spec


def prepare_from_config(cfg: DictConfig, data_cfg: DictConfig, run_dir: Path) -> PreparedData:
    """Load ``data_cfg.loader``, apply ``cfg.labels``, load/make the split, and record load problems."""
    loaded = instantiate(data_cfg.loader)
    spec = split_spec(cfg)
    split_name = f"{data_cfg.name}-{cfg.labels.name}-{spec.protocol}-s{spec.seed}"
    if spec.protocol == "predefined":
        split_name = f"{data_cfg.name}-{cfg.labels.name}-{Path(spec.predefined_path).name}"
    prepared = prepare_items(
        loaded, list(cfg.labels.classes), spec, Path(cfg.paths.splits_dir) / f"{split_name}.csv",
        aliases=dict(cfg.labels.aliases), dedupe_on=data_cfg.get("dedupe_on"),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(loaded.problems):
        loaded.problems.to_csv(run_dir / "load_problems.csv", index=False)
    return prepared


def write_branch_outputs(run_dir: Path, items: pd.DataFrame, proba: np.ndarray, labels: list[str]) -> Path:
    """``predictions.csv``: item_id, split, label, y, predicted label and one ``p_<class>`` column each.

    This file is the branch's whole interface to fusion: fusion reads nothing else of a branch.
    """
    table = items[["item_id", "split", "label", "y"]].reset_index(drop=True).copy()
    table["predicted"] = [labels[i] for i in proba.argmax(1)]
    for i, label in enumerate(labels):
        table[f"p_{label}"] = proba[:, i]
    path = run_dir / "predictions.csv"
    table.to_csv(path, index=False)
    return path
