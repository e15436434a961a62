"""Audio models: the mel-spectrogram CNN and the hybrid that joins it with the feature MLP.

Every model maps its input batch to logits ``(batch, n_classes)`` and exposes ``embed`` (the
layer before the classifier) so the hybrid can join branches in a dense layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from audio.feature_mlp import FeatureMLP


class MelCNN(nn.Module):
    """[3×3 conv → BatchNorm → ReLU → 2×2 max-pool] per entry of ``channels`` → global average → dropout → linear.

    Input: log-mel ``(batch, n_mels, n_frames)`` in dB (128×128 for a 3-second segment).
    """

    def __init__(self, n_classes: int, channels: Sequence[int] = (16, 32, 64, 128), dropout: float = 0.3) -> None:
        super().__init__()
        # dB values lie in [-80, 0]; a BatchNorm on the single input channel rescales them.
        layers: list[nn.Module] = [nn.BatchNorm2d(1)]
        width = 1
        for size in channels:
            layers += [nn.Conv2d(width, size, 3, padding=1), nn.BatchNorm2d(size), nn.ReLU(), nn.MaxPool2d(2)]
            width = size
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = width
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, n_classes))

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        return self.features(mel.unsqueeze(1))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(mel))


class HybridNet(nn.Module):
    """Mel-CNN embedding ⊕ feature-MLP embedding → dense → ReLU → dropout → linear.

    Input: the tuple ``(log_mel (batch, n_mels, n_frames), features (batch, n_features))``.
    """

    def __init__(self, cnn: MelCNN, mlp: FeatureMLP, n_classes: int, hidden: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        self.cnn, self.mlp = cnn, mlp
        self.head = nn.Sequential(
            nn.Linear(cnn.embed_dim + mlp.embed_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mel, features = inputs
        return self.head(torch.cat([self.cnn.embed(mel), self.mlp.embed(features)], dim=1))
