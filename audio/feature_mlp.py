"""MLP over the hand-crafted GTZAN feature table (three dense layers + dropout)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class FeatureMLP(nn.Module):
    """Standardise → [Linear → ReLU → Dropout] × len(hidden) → Linear (no hidden layers: logistic regression).

    The standardisation statistics are buffers fitted on the training rows only
    (:meth:`fit_standardiser`), so a checkpoint carries them and scoring needs nothing else.
    Input ``(batch, n_features)`` float32; output logits ``(batch, n_classes)``.
    """

    def __init__(self, n_features: int, n_classes: int, hidden: Sequence[int] = (256, 128, 64),
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.embed_dim = width
        self.head = nn.Linear(width, n_classes)

    def fit_standardiser(self, x_train: np.ndarray) -> "FeatureMLP":
        x_train = np.asarray(x_train, dtype=np.float64)
        std = x_train.std(axis=0)
        self.mean.copy_(torch.as_tensor(x_train.mean(axis=0), dtype=torch.float32))
        # A constant feature would divide by zero; leave it unscaled.
        self.scale.copy_(torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised input through the hidden layers: ``(batch, embed_dim)``."""
        return self.body((x - self.mean) / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
