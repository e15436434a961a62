"""Calibration: reliability diagrams and temperature scaling of a branch (the expected calibration error and
log-loss are metrics of :mod:`engine.report`).

A branch trained with label smoothing (or on few items) can be confidently wrong or timidly
right; a fusion head that averages or stacks probabilities inherits that. Temperature scaling
(Guo et al., 2017) rescales a branch's log-probabilities by one scalar fitted on held-out items
(validation or out-of-fold), which leaves its argmax, and so its accuracy, unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from engine.report import PROBABILITY_FLOOR, expected_calibration_error, log_loss


def reliability(proba: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and item count (the reliability diagram's data)."""
    proba, y = np.asarray(proba, dtype=float), np.asarray(y)
    confidence, correct = proba.max(1), proba.argmax(1) == y
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        inside = bins == b
        rows["confidence"].append(float(confidence[inside].mean()) if inside.any() else float("nan"))
        rows["accuracy"].append(float(correct[inside].mean()) if inside.any() else float("nan"))
        rows["count"].append(int(inside.sum()))
    return rows


def plot_reliability(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, n_bins: int = 10) -> Path:
    """Reliability diagrams side by side: accuracy per confidence bin against the diagonal, with the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, proba, y) in zip(axes[0], panels):
        diagram = reliability(proba, y, n_bins)
        centres = (np.arange(n_bins) + 0.5) / n_bins
        ax.bar(centres, np.nan_to_num(diagram["accuracy"]), width=1 / n_bins, edgecolor="black", alpha=0.7,
               label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE {expected_calibration_error(proba, y, n_bins):.3f} (n={len(y)})", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class TemperatureScaling:
    """``softmax(log p / T)`` with ``T`` fitted by log-loss on held-out items (``fit`` / ``transform``)."""

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)) -> None:
        self.bounds = bounds

    @staticmethod
    def scale(proba: np.ndarray, temperature: float) -> np.ndarray:
        """Rows of NaN (a missing modality) stay NaN."""
        logits = np.log(np.clip(proba, PROBABILITY_FLOOR, 1)) / temperature
        logits -= np.nanmax(logits, axis=1, keepdims=True)
        scaled = np.exp(logits)
        return scaled / scaled.sum(1, keepdims=True)

    def fit(self, proba: np.ndarray, y: np.ndarray) -> "TemperatureScaling":
        present = ~np.isnan(proba).any(1)
        if not present.any():
            raise ValueError("temperature scaling needs items with this modality to fit on")
        p, t = proba[present], np.asarray(y)[present]
        result = minimize_scalar(lambda temperature: log_loss(self.scale(p, temperature), t), bounds=self.bounds,
                                 method="bounded")
        self.temperature_ = float(result.x)
        return self

    def transform(self, proba: np.ndarray) -> np.ndarray:
        return self.scale(proba, self.temperature_)
