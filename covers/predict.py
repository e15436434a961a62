"""The covers branch's one predict path: a trained cover model and covers → class probabilities.

Training (its held-out predictions), ``evaluate_covers``, batch scoring and the explanations all
call it; it never imports training code.

A frozen-mode model is scored through its backbone's cached embeddings and its head (the same
numbers training produced); a fine-tuned model through the whole network on decoded covers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import v2

from covers.backbones import BackboneInfo, CoverClassifier, create_model
from covers.inputs import backbone_embeddings, decode_covers
from data.items import LoadResult
from engine.inference import load_checkpoint, predict_outputs, predict_proba

#: Modes whose checkpoint a predict path can load (the others are scikit-learn baselines).
TORCH_MODES = ("finetune", "frozen")


class CoverImages(Dataset):
    """Decoded covers ``uint8 (n, s, s, 3)`` → ``uint8 (3, s, s)`` pixels (the model normalises them on its
    device), with per-class augmentation when training.

    ``set_size`` (progressive resizing) resizes every image to another side after augmentation.
    """

    def __init__(self, images: np.ndarray, y: np.ndarray, augment: list | None = None) -> None:
        self.images, self.y, self.augment = images, y, augment
        self.size: int | None = None

    def set_size(self, size: int) -> None:
        self.size = None if size == self.images.shape[1] else int(size)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        transform = self.augment[self.y[index]] if self.augment else None
        if transform is not None:
            image = transform(image)
        if self.size is not None:
            image = v2.functional.resize(image, [self.size, self.size], antialias=True)
        return image, int(self.y[index])


@dataclass
class CoverModel:
    """A trained cover classifier and what scoring it needs: its classes and how it was trained."""

    network: CoverClassifier
    labels: list[str]
    mode: str  # "finetune" (whole network trained) or "frozen" (head on pretrained embeddings)
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def info(self) -> BackboneInfo:
        return self.network.info


def load_cover_model(checkpoint_path: str | Path) -> tuple[CoverModel, dict[str, Any]]:
    """Rebuild a cover model from its ``checkpoint.pt``: ``(model, checkpoint record)``.

    A frozen-mode checkpoint holds only the head; the backbone comes from the same pretrained
    weights it was trained on. A fine-tuned checkpoint holds every layer.
    """
    record = load_checkpoint(checkpoint_path)
    spec = record.get("covers_model")
    if spec is None:
        raise ValueError(f"{checkpoint_path} is not a cover-model checkpoint")
    if spec["mode"] not in TORCH_MODES:
        raise ValueError(f"{checkpoint_path}: mode {spec['mode']!r} has no predict path (modes: {TORCH_MODES})")
    labels = list(record["labels"])
    frozen = spec["mode"] == "frozen"
    network = create_model(spec["backbone"], len(labels), pretrained=frozen,
                           weights_path=spec.get("weights_path"), dropout=spec.get("dropout", 0.5))
    (network.head if frozen else network).load_state_dict(record["model_state"])
    return CoverModel(network.eval(), labels, spec["mode"], dict(record.get("aliases", {}))), record


def cover_inputs(model: CoverModel, items: pd.DataFrame, cache_dir: str | Path | None = None,
                 device: str = "auto", progress: bool = False) -> tuple[LoadResult, np.ndarray]:
    """What the model reads of each cover (``cover_path``; ``md5`` optional): kept items + problems, and
    the embeddings ``(n, embed_dim)`` (frozen) or decoded covers ``uint8 (n, s, s, 3)`` (fine-tuned)."""
    if model.mode == "frozen":
        return backbone_embeddings(items, model.network.backbone, model.info, cache_dir, device=device,
                                   progress=progress)
    return decode_covers(items, model.info.input_size, cache_dir, progress=progress)


def predict_cover_inputs(model: CoverModel, x: np.ndarray, device: str = "auto") -> np.ndarray:
    """Class probabilities ``(n, k)`` from :func:`cover_inputs`' arrays."""
    if len(x) == 0:
        return np.zeros((0, len(model.labels)))
    if model.mode == "frozen":
        dataset: Dataset = TensorDataset(torch.from_numpy(np.require(x, np.float32, ["C", "W"])),
                                         torch.zeros(len(x), dtype=torch.int64))
        return predict_proba(model.network.head, dataset, device=device)
    return predict_decoded_covers(model, x, device)


def predict_decoded_covers(model: CoverModel, x: np.ndarray, device: str = "auto",
                           precision: str = "auto") -> np.ndarray:
    """Class probabilities ``(n, k)`` of decoded covers ``uint8 (n, s, s, 3)`` through the whole network
    (backbone and head), whatever the mode, in ``precision`` (``engine.inference.PRECISIONS``): what batch
    scoring runs where decoding happened elsewhere."""
    if len(x) == 0:
        return np.zeros((0, len(model.labels)))
    return predict_proba(model.network, CoverImages(x, np.zeros(len(x), dtype=np.int64)), device=device,
                         images=True, precision=precision)


def predict_covers(model: CoverModel, items: pd.DataFrame, cache_dir: str | Path | None = None,
                   device: str = "auto", progress: bool = False) -> tuple[LoadResult, np.ndarray]:
    """Covers of ``items`` → ``(kept items with the problems of the rest, probabilities of the kept)``."""
    kept, x = cover_inputs(model, items, cache_dir, device, progress)
    return kept, predict_cover_inputs(model, x, device)


def cover_embeddings(model: CoverModel, x: np.ndarray, device: str = "auto") -> np.ndarray:
    """The backbone's pooled features ``(n, embed_dim)`` from :func:`cover_inputs`' arrays: a frozen model's
    inputs already are (the cached embeddings); a fine-tuned model's backbone computes them from the covers."""
    if model.mode == "frozen" or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    return predict_outputs(nn.Sequential(model.network.pixels, model.network.backbone),
                           CoverImages(x, np.zeros(len(x), dtype=np.int64)), device=device, images=True)
