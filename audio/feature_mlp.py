"""MLP over the hand-crafted GTZAN feature table (three dense layers + dropout)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


#: Added before the logarithm so that a variance of exactly zero (a silent band) stays finite.
LOG_FLOOR = 1e-12


def log_columns(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` ``(n_rows, n_features)`` as float64 with the columns where ``mask`` is true on a log scale."""
    x = np.array(x, dtype=np.float64)
    x[:, mask] = np.log(np.clip(x[:, mask], 0, None) + LOG_FLOOR)
    return x


class FeatureMLP(nn.Module):
    """[log of the ``log_columns``] → standardise → [Linear → ReLU → Dropout] × len(hidden) → Linear
    (no hidden layers: logistic regression).

    The standardisation statistics are buffers fitted on the training rows only
    (:meth:`fit_standardiser`), so a checkpoint carries them and scoring needs nothing else.
    ``log_columns`` (indices) are read on a log scale: frame variances span several orders of
    magnitude across clips, and standardising them raw leaves most clips in a narrow band near the
    mean. The set comes from the model config, so it is not stored in the checkpoint.
    Input ``(batch, n_features)`` float32; output logits ``(batch, n_classes)``.
    """

    def __init__(self, n_features: int, n_classes: int, hidden: Sequence[int] = (256, 128, 64),
                 dropout: float = 0.3, log_columns: Sequence[int] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        log_mask = torch.zeros(n_features, dtype=torch.bool)
        log_mask[list(log_columns)] = True
        self.register_buffer("log_mask", log_mask, persistent=False)
        self.has_log_columns = bool(log_mask.any())
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.embed_dim = width
        self.head = nn.Linear(width, n_classes)

    def _logged(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_log_columns:
            x = torch.where(self.log_mask, torch.log(x.clamp(min=0) + LOG_FLOOR), x)
        return x

    def fit_standardiser(self, x_train: np.ndarray) -> "FeatureMLP":
        """Fit the standardisation on ``x_train`` ``(n_rows, n_features)`` (after the log of the log columns)."""
        x_train = log_columns(x_train, self.log_mask.cpu().numpy())
        std = x_train.std(axis=0)
        self.mean.copy_(torch.as_tensor(x_train.mean(axis=0), dtype=torch.float32))
        # A constant feature would divide by zero; leave it unscaled.
        self.scale.copy_(torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised input through the hidden layers: ``(batch, embed_dim)``."""
        return self.body((self._logged(x) - self.mean) / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
