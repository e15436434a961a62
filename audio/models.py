"""Audio models: the feature MLP, the mel-spectrogram CNN and the hybrid that joins them, in one registry.

Every model maps its input batch to logits ``(batch, n_classes)`` and exposes ``embed`` (the
layer before the classifier) so the hybrid can join branches in a dense layer. A model kind is
registered with the inputs it reads (``features``: the 57 GTZAN features; ``mel``: 128×128
log-mels of 3-second segments), in the order its ``forward`` takes them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from audio.feature_mlp import FeatureMLP
from data.gtzan import FEATURE_COLUMNS
from engine.registry import Registry


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

    def embed(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The joint dense layer's output (after ReLU/dropout), the layer before the classifier."""
        mel, features = inputs
        return self.head[:-1](torch.cat([self.cnn.embed(mel), self.mlp.embed(features)], dim=1))

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.head[-1](self.embed(inputs))


#: ``build(model_cfg, labels) -> nn.Module``
ModelBuilder = Callable[[dict[str, Any], Sequence[str]], nn.Module]


@dataclass(frozen=True)
class AudioModelKind:
    """How to build one kind of audio model from its config and label set, and which inputs it reads.

    ``trainable=False``: a fixed model (zero-shot), reported without the trainer.
    ``min_seconds``: the shortest audio file the model scores (shorter ones are refused, with the
    reason); it goes into the model card.
    """

    inputs: tuple[str, ...]
    build: ModelBuilder
    trainable: bool = True
    min_seconds: float = 0.0


AUDIO_MODELS: Registry[AudioModelKind] = Registry("audio.model.kind")


def register_audio_model(
    name: str, inputs: tuple[str, ...], trainable: bool = True, min_seconds: float = 0.0
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator over ``build(model_cfg, labels) -> nn.Module``: a new ``audio.model.kind``."""
    def add(build: ModelBuilder) -> ModelBuilder:
        AUDIO_MODELS.register(name)(AudioModelKind(tuple(inputs), build, trainable, min_seconds))
        return build
    return add


#: Whole-clip GTZAN statistics (means and variances over frames, tempo) of a file this short are not
#: those of the 30-second clips the models learn from.
MIN_SECONDS_WHOLE_CLIP = 10.0
#: One whole 3-second window (a segment of the mel models, a patch of musicnn).
MIN_SECONDS_WINDOW = 3.0


def feature_columns(model_cfg: dict[str, Any]) -> list[str]:
    """The table columns a feature model reads: ``model.features`` (e.g. a catalogue's Spotify descriptors),
    or by default the 57 GTZAN features (computed from the audio when the table lacks them)."""
    return list(model_cfg.get("features") or FEATURE_COLUMNS)


def layer_sizes(model_cfg: dict[str, Any], key: str, default: Sequence[int]) -> list[int]:
    """``model.<key>``: the widths of a model's layers, each a positive integer.

    A width of 0 would build a layer with no units: the classifier after it sees nothing and the
    model predicts one class for every input, a silent majority-class result.
    """
    sizes = model_cfg.get(key, default)
    sizes = [sizes] if isinstance(sizes, int) else sizes
    if not isinstance(sizes, Sequence) or isinstance(sizes, str) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes):
        raise ValueError(f"audio.model.{key} must be a list of positive integers (layer widths), got {sizes!r}")
    return list(sizes)


def _feature_mlp(model_cfg: dict[str, Any], labels: Sequence[str]) -> FeatureMLP:
    columns = feature_columns(model_cfg)
    # model.log_variances: the frame-variance columns (``*_var``) enter on a log scale.
    log_columns = [i for i, name in enumerate(columns) if name.endswith("_var")] if model_cfg.get("log_variances") else []
    return FeatureMLP(len(columns), len(labels), hidden=layer_sizes(model_cfg, "hidden", (256, 128, 64)),
                      dropout=model_cfg.get("dropout", 0.3), log_columns=log_columns)


def _mel_cnn(model_cfg: dict[str, Any], labels: Sequence[str]) -> MelCNN:
    return MelCNN(len(labels), channels=layer_sizes(model_cfg, "channels", (16, 32, 64, 128)),
                  dropout=model_cfg.get("dropout", 0.3))


register_audio_model("feature_mlp", ("features",), min_seconds=MIN_SECONDS_WHOLE_CLIP)(_feature_mlp)
register_audio_model("mel_cnn", ("mel",), min_seconds=MIN_SECONDS_WINDOW)(_mel_cnn)


@register_audio_model("hybrid", ("mel", "features"), min_seconds=MIN_SECONDS_WINDOW)
def _hybrid(model_cfg: dict[str, Any], labels: Sequence[str]) -> HybridNet:
    # The MLP is built before the CNN, as it always was: the same seed gives the same initial weights.
    mlp = _feature_mlp(model_cfg, labels)
    head_hidden = layer_sizes(model_cfg, "head_hidden", 128)
    if len(head_hidden) != 1:
        raise ValueError(f"audio.model.head_hidden is the width of the one joint layer, got {head_hidden!r}")
    return HybridNet(_mel_cnn(model_cfg, labels), mlp, len(labels), hidden=head_hidden[0],
                     dropout=model_cfg.get("dropout", 0.3))


@register_audio_model("musicnn_embed", ("musicnn_embedding",), min_seconds=MIN_SECONDS_WINDOW)
def _musicnn_embed(model_cfg: dict[str, Any], labels: Sequence[str]) -> FeatureMLP:
    """A head (linear, or an MLP with ``hidden`` layers) on frozen musicnn embeddings (200 per network)."""
    from audio.musicnn import EMBEDDING_DIM

    return FeatureMLP(EMBEDDING_DIM * len(model_cfg["musicnn"]), len(labels), hidden=layer_sizes(model_cfg, "hidden", []),
                      dropout=model_cfg.get("dropout", 0.0))


@register_audio_model("musicnn_tags", ("musicnn_tags",), trainable=False, min_seconds=MIN_SECONDS_WINDOW)
def _musicnn_tags(model_cfg: dict[str, Any], labels: Sequence[str]) -> nn.Module:
    """Zero-shot: musicnn's tag probabilities → genres through a tag → genre table (no training)."""
    from audio.musicnn import TagGenres

    return TagGenres(list(model_cfg["musicnn"]), labels, model_cfg.get("tag_genres"))


def model_kind(model_cfg: dict[str, Any]) -> AudioModelKind:
    """The registered kind a config (or a checkpoint's ``model`` record) names."""
    return AUDIO_MODELS.get(model_cfg.get("kind"))


def build_audio_model(model_cfg: dict[str, Any], labels: Sequence[str]) -> nn.Module:
    """The model a config (or a checkpoint's ``model`` record) describes for ``labels``, untrained."""
    return model_kind(model_cfg).build(model_cfg, labels)
