"""Late-fusion heads: scikit-learn estimators over the two branches' class probabilities.

``X`` is ``(n, 2k)``: the cover branch's ``k`` class probabilities, then the audio branch's
(:func:`fusion_inputs`); a modality an item lacks is NaN. Rows missing one modality are predicted
by the branch they have; the learned combination applies where both exist, and is fitted on
those rows only. ``classes_`` is ``0 … k-1`` (class indices of the label set), so
``predict_proba`` columns line up with the branches' even when a class is absent from ``y``.

Heads register in :data:`FUSION_HEADS` and keep their fitted state as plain arrays
(:meth:`FusionHead.get_state`), so a saved head is JSON, never a pickle.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from engine.io import write_json
from engine.predictions import present
from engine.registry import Registry

EPS = 1e-6
FUSION_HEADS: Registry = Registry("fusion.method")
#: File name of a fitted head in a run's ``fusion/`` folder (JSON: registry name, parameters, fitted arrays).
FUSION_HEAD = "fusion_head.json"


def fusion_inputs(p_cover: np.ndarray, p_audio: np.ndarray) -> np.ndarray:
    """``(n, 2k)`` fusion input from the branches' ``(n, k)`` probabilities (NaN rows: modality missing)."""
    return np.hstack([np.asarray(p_cover, dtype=float), np.asarray(p_audio, dtype=float)])


def split_inputs(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cover and audio halves of a fusion input."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] % 2 or X.shape[1] < 4:
        raise ValueError(f"fusion input must be (n, 2k) with k ≥ 2 classes per branch, got shape {X.shape}")
    k = X.shape[1] // 2
    return X[:, :k], X[:, k:]


def both_present(X: np.ndarray) -> np.ndarray:
    """Rows of a fusion input that have both modalities."""
    p_cover, p_audio = split_inputs(X)
    return present(p_cover) & present(p_audio)


class FusionHead(ClassifierMixin, BaseEstimator):
    """What every head shares: the single-modality fallback, ``classes_``, plain-array state, and optional
    per-branch temperatures applied to its inputs before anything else (see :meth:`with_temperatures`).

    A subclass implements ``_fit(p_cover, p_audio, y)`` and ``_combine(p_cover, p_audio)`` on rows
    that have both modalities, and lists its fitted attributes in ``_state``.
    """

    _state: tuple[str, ...] = ()

    def with_temperatures(self, cover: float, audio: float) -> "FusionHead":
        """Scale each branch's log-probabilities by ``1/T`` (temperature scaling) in ``fit`` and ``predict_proba``."""
        self.temperatures_ = np.array([cover, audio], dtype=float)
        return self

    def _calibrated(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from fusion.calibration import TemperatureScaling

        p_cover, p_audio = split_inputs(X)
        temperatures = getattr(self, "temperatures_", None)
        if temperatures is None:
            return p_cover, p_audio
        return TemperatureScaling.scale(p_cover, temperatures[0]), TemperatureScaling.scale(p_audio, temperatures[1])

    def fit(self, X: np.ndarray, y: np.ndarray) -> "FusionHead":
        p_cover, p_audio = self._calibrated(X)
        both = present(p_cover) & present(p_audio)
        if both.sum() == 0:
            raise ValueError("fusion needs items with both modalities to fit on")
        self.n_features_in_ = 2 * p_cover.shape[1]
        self.classes_ = np.arange(p_cover.shape[1])
        self._fit(p_cover[both], p_audio[both], np.asarray(y)[both])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "classes_")
        p_cover, p_audio = self._calibrated(X)
        out = np.where(np.isnan(p_cover), p_audio, p_cover)  # single modality: the branch it has
        both = present(p_cover) & present(p_audio)
        if both.any():
            out[both] = self._combine(p_cover[both], p_audio[both])
        if np.isnan(out).any():
            raise ValueError("an item has neither modality")
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]

    def get_state(self) -> dict[str, Any]:
        """Fitted attributes as JSON-ready lists (see :func:`head_from_state`)."""
        check_is_fitted(self, "classes_")
        names = ("classes_", "n_features_in_", *self._state, *(("temperatures_",) if hasattr(self, "temperatures_") else ()))
        return {name: _lists(getattr(self, name)) for name in names}

    def set_state(self, state: dict[str, Any]) -> "FusionHead":
        for name in ("classes_", "n_features_in_", *self._state, *(("temperatures_",) if "temperatures_" in state else ())):
            value = state[name]
            if name.endswith("classes_"):
                value = np.asarray(value, dtype=int)
            elif not np.isscalar(value):
                value = _arrays(value)
            setattr(self, name, value)
        return self

    def _fit(self, p_cover: np.ndarray, p_audio: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _combine(self, p_cover: np.ndarray, p_audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _lists(value: Any) -> Any:
    """Arrays (or lists of arrays of different shapes, such as an MLP's layers) as nested lists."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return np.asarray(value).tolist()


def _arrays(value: Any) -> Any:
    """Lists back to arrays: a list of equal-length rows → one array; a ragged list (layers) → list of arrays."""
    try:
        return np.asarray(value, dtype=float)
    except ValueError:
        return [np.asarray(v, dtype=float) for v in value]


@FUSION_HEADS.register("weighted")
class WeightedAverageFusion(FusionHead):
    """``w · p_cover + (1 − w) · p_audio``; ``w`` fixed, or tuned on the fitting items by log-loss."""

    _state = ("weight_",)

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
        return float(self.weight_) * p_cover + (1 - float(self.weight_)) * p_audio


@FUSION_HEADS.register("mean")
class MeanFusion(WeightedAverageFusion):
    """The plain mean of the two branches (weight fixed at 0.5)."""

    def __init__(self) -> None:
        super().__init__(weight=0.5)


def _log_probabilities(p_cover: np.ndarray, p_audio: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.concatenate([p_cover, p_audio], 1), EPS, 1))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _full_columns(proba: np.ndarray, fitted_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over the fitted classes spread into all ``n_classes`` columns (absent classes: 0)."""
    out = np.zeros((len(proba), n_classes))
    out[:, np.asarray(fitted_classes, dtype=int)] = proba
    return out


@FUSION_HEADS.register("logreg")
class LogisticStackingFusion(FusionHead):
    """Multinomial logistic regression on the concatenated log-probabilities of both branches."""

    _state = ("coef_", "intercept_", "fitted_classes_")

    def __init__(self, C: float = 1.0, random_state: int | None = None) -> None:
        self.C, self.random_state = C, random_state

    def _fit(self, p_cover, p_audio, y) -> None:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.C, max_iter=5000, random_state=self.random_state)
        model.fit(_log_probabilities(p_cover, p_audio), y)
        self.coef_, self.intercept_, self.fitted_classes_ = model.coef_, model.intercept_, model.classes_

    def _combine(self, p_cover, p_audio) -> np.ndarray:
        z = _log_probabilities(p_cover, p_audio) @ np.asarray(self.coef_).T + np.asarray(self.intercept_)
        if z.shape[1] == 1:  # two classes seen: scikit-learn's binary form, one logit for the second
            z = np.hstack([np.zeros_like(z), z])
        return _full_columns(_softmax(z), self.fitted_classes_, len(self.classes_))


@FUSION_HEADS.register("mlp")
class MLPStackingFusion(FusionHead):
    """A small MLP (one ReLU hidden layer) on the concatenated log-probabilities of both branches."""

    _state = ("coefs_", "intercepts_", "fitted_classes_")

    def __init__(self, hidden: int = 16, alpha: float = 1e-2, random_state: int | None = None) -> None:
        self.hidden, self.alpha, self.random_state = hidden, alpha, random_state

    def _fit(self, p_cover, p_audio, y) -> None:
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier((self.hidden,), alpha=self.alpha, max_iter=2000, random_state=self.random_state)
        model.fit(_log_probabilities(p_cover, p_audio), y)
        self.coefs_, self.intercepts_, self.fitted_classes_ = model.coefs_, model.intercepts_, model.classes_

    def _combine(self, p_cover, p_audio) -> np.ndarray:
        a = _log_probabilities(p_cover, p_audio)
        for layer, (weights, bias) in enumerate(zip(self.coefs_, self.intercepts_)):
            a = a @ weights + bias
            if layer < len(self.coefs_) - 1:
                a = np.maximum(a, 0)
        if a.shape[1] == 1:  # two classes seen: a logistic output unit
            positive = 1 / (1 + np.exp(-a))
            return _full_columns(np.hstack([1 - positive, positive]), self.fitted_classes_, len(self.classes_))
        return _full_columns(_softmax(a), self.fitted_classes_, len(self.classes_))


def create_fusion_head(method: str, random_state: int | None = None, weight: float | None = None) -> FusionHead:
    """The head registered as ``method``, given the options it takes."""
    return FUSION_HEADS.create(method, random_state=random_state, weight=weight)


def head_to_dict(method: str, head: FusionHead) -> dict[str, Any]:
    """A fitted head as JSON-ready data: its registry name, parameters and fitted state."""
    return {"method": method, "params": head.get_params(), "state": head.get_state()}


def head_from_dict(record: dict[str, Any]) -> FusionHead:
    """The head :func:`head_to_dict` wrote, rebuilt from data alone (no pickle, no code from the file)."""
    head = FUSION_HEADS.get(record["method"])(**record["params"])
    return head.set_state(record["state"])


def save_fusion_head(path: str | Path, method: str, head: FusionHead, **extra: Any) -> None:
    """Write a fitted head as JSON (plus ``extra`` fields such as the labels and pairing)."""
    write_json(path, {**head_to_dict(method, head), **extra})


def load_fusion_head(path: str | Path) -> FusionHead:
    """The fitted head :func:`save_fusion_head` wrote; a broken file is one clear error naming it."""
    try:
        return head_from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a usable fusion head ({type(error).__name__}: {error})") from None
