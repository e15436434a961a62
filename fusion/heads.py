"""Late-fusion heads over branch probabilities, in scikit-learn's fit / predict_proba style.

Every head takes ``(p_cover, p_audio)``: two ``(n, k)`` arrays of branch class probabilities,
rows aligned, a row of NaN where that modality is missing. Rows missing one modality are
predicted by the branch they have; the learned combination applies where both exist.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-6


def _both(p_cover: np.ndarray, p_audio: np.ndarray) -> np.ndarray:
    return ~np.isnan(p_cover).any(1) & ~np.isnan(p_audio).any(1)


class _FusionHead:
    def fit(self, p_cover: np.ndarray, p_audio: np.ndarray, y: np.ndarray) -> "_FusionHead":
        both = _both(p_cover, p_audio)
        if both.sum() == 0:
            raise ValueError("fusion needs validation items with both modalities to fit on")
        self.n_classes_ = p_cover.shape[1]
        self._fit(p_cover[both], p_audio[both], np.asarray(y)[both])
        return self

    def predict_proba(self, p_cover: np.ndarray, p_audio: np.ndarray) -> np.ndarray:
        out = np.where(np.isnan(p_cover), p_audio, p_cover)  # single modality: the branch it has
        both = _both(p_cover, p_audio)
        if both.any():
            out[both] = self._combine(p_cover[both], p_audio[both])
        if np.isnan(out).any():
            raise ValueError("an item has neither modality")
        return out

    def predict(self, p_cover: np.ndarray, p_audio: np.ndarray) -> np.ndarray:
        return self.predict_proba(p_cover, p_audio).argmax(1)


class WeightedAverageFusion(_FusionHead):
    """``w · p_cover + (1 − w) · p_audio``; ``w`` fixed, or tuned on the fitting items by log-loss."""

    def __init__(self, weight: float | None = None, grid: int = 21) -> None:
        self.weight, self.grid = weight, grid

    def _fit(self, p_cover, p_audio, y) -> None:
        if self.weight is not None:
            self.weight_ = float(self.weight)
            return
        candidates = np.linspace(0, 1, self.grid)
        losses = [-np.log(np.clip((w * p_cover + (1 - w) * p_audio)[np.arange(len(y)), y], EPS, 1)).mean()
                  for w in candidates]
        self.weight_ = float(candidates[int(np.argmin(losses))])

    def _combine(self, p_cover, p_audio) -> np.ndarray:
        return self.weight_ * p_cover + (1 - self.weight_) * p_audio


class StackingFusion(_FusionHead):
    """A learned head (logistic regression or small MLP) on concatenated log-probabilities."""

    def __init__(self, method: str = "logreg", seed: int = 0, c: float = 1.0, hidden: int = 16) -> None:
        self.method, self.seed, self.c, self.hidden = method, seed, c, hidden

    def _features(self, p_cover, p_audio) -> np.ndarray:
        return np.log(np.clip(np.concatenate([p_cover, p_audio], 1), EPS, 1))

    def _fit(self, p_cover, p_audio, y) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier

        if self.method == "logreg":
            self.model_ = LogisticRegression(C=self.c, max_iter=5000)
        elif self.method == "mlp":
            self.model_ = MLPClassifier((self.hidden,), alpha=1e-2, max_iter=2000, random_state=self.seed)
        else:
            raise ValueError(f"fusion method must be 'logreg' or 'mlp', got {self.method!r}")
        self.model_.fit(self._features(p_cover, p_audio), y)

    def _combine(self, p_cover, p_audio) -> np.ndarray:
        proba = np.zeros((len(p_cover), self.n_classes_))
        proba[:, self.model_.classes_] = self.model_.predict_proba(self._features(p_cover, p_audio))
        return proba


def create_fusion(method: str, seed: int = 0, weight: float | None = None) -> _FusionHead:
    """``weighted`` (tuned on the fitting items), ``mean`` (fixed 0.5), ``logreg`` or ``mlp``."""
    if method == "weighted":
        return WeightedAverageFusion(weight)
    if method == "mean":
        return WeightedAverageFusion(0.5)
    if method in ("logreg", "mlp"):
        return StackingFusion(method, seed=seed)
    raise ValueError(f"fusion.method must be one of weighted, mean, logreg, mlp; got {method!r}")
