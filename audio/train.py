"""Train and report the audio feature MLP (the audio branch of the main job)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import TensorDataset

from audio.feature_mlp import FeatureMLP
from data.gtzan import FEATURE_COLUMNS
from engine.branch import prepare_from_config, write_branch_outputs
from engine.config import trainer_config
from engine.run import train_evaluate
from engine.trainer import predict_proba, seed_everything


def _tensors(frame) -> TensorDataset:
    x = torch.tensor(frame[FEATURE_COLUMNS].to_numpy(np.float32))
    return TensorDataset(x, torch.tensor(frame["y"].to_numpy(np.int64)))


def train_feature_mlp(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the feature MLP on the train part, early-stop on val, report on test.

    Writes the run folder (history, checkpoint, metrics, report, confusion, model card) and
    ``predictions.csv`` for val and test items. Returns the test metrics.
    """
    branch = cfg.audio
    prepared = prepare_from_config(cfg, branch.data, run_dir)
    train, val, test = (prepared.part(p) for p in ("train", "val", "test"))
    config = trainer_config(cfg, branch.trainer)
    seed_everything(config.seed)
    model = FeatureMLP(len(FEATURE_COLUMNS), len(prepared.labels), hidden=list(branch.model.hidden),
                       dropout=branch.model.dropout).fit_standardiser(train[FEATURE_COLUMNS].to_numpy())
    card = {"branch": "audio", "model": branch.name, "data": branch.data.name, **prepared.describe(),
            "config": OmegaConf.to_container(branch, resolve=True)}
    metrics, _, _ = train_evaluate(
        model, _tensors(train), _tensors(val), _tensors(test), test["y"].to_numpy(), prepared.labels,
        config, run_dir, title=f"audio {branch.name} · {branch.data.name} · {prepared.spec.protocol}", card=card,
    )
    held_out = prepared.items[prepared.items["split"].isin(["val", "test"])]
    write_branch_outputs(run_dir, held_out, predict_proba(model, _tensors(held_out), device=config.device),
                         prepared.labels)
    return metrics
