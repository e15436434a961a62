"""Grad-CAM maps and "most typical covers" grids for a trained cover model."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from covers.backbones import CoverClassifier


def grad_cam(model: CoverClassifier, x: torch.Tensor, class_index: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM (Selvaraju et al., 2017) on the backbone's last feature maps.

    ``x``: normalised images ``(batch, 3, s, s)``. Maps are for ``class_index`` (default: the
    predicted class), upsampled to ``s``×``s`` and scaled to [0, 1] per image.
    Returns ``(cams (batch, s, s), probabilities (batch, n_classes))``.
    """
    model.eval()
    maps = model.backbone.maps(x).detach().requires_grad_(True)
    logits = model.head(maps.mean(dim=(2, 3)))
    target = logits.argmax(1) if class_index is None else torch.as_tensor(class_index)
    logits.gather(1, target.view(-1, 1)).sum().backward()
    weights = maps.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).detach().numpy(), torch.softmax(logits.detach(), 1).numpy()


def most_typical(predictions: pd.DataFrame, labels: Sequence[str], per_class: int = 6) -> pd.DataFrame:
    """For each class, the covers predicted as it with the highest probability (``predictions.csv`` rows)."""
    picked = []
    for label in labels:
        rows = predictions[predictions["predicted"] == label].sort_values(f"p_{label}", ascending=False)
        picked.append(rows.head(per_class).assign(typical_of=label))
    return pd.concat(picked, ignore_index=True)


def save_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, columns: int = 6,
              overlays: Sequence[np.ndarray] | None = None) -> Path:
    """Images (``uint8 (s, s, 3)``) in a grid with titles; ``overlays`` (``(s, s)`` in [0, 1]) drawn as heat maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (image, title) in enumerate(zip(images, titles)):
        ax = axes.ravel()[i]
        ax.imshow(image)
        if overlays is not None:
            ax.imshow(overlays[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
