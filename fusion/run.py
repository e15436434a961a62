"""Fusion of a run's branches: pair their held-out outputs, fit the head on validation items, compare on test
items (image-only vs. audio-only vs. fused, beside the majority class) through :mod:`fusion.compare`."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from engine.settings import checked_dataclass
from engine.predictions import probability_columns, read_predictions, write_predictions
from fusion.calibration import TemperatureScaling
from fusion.compare import PAIRS_FILE, compare_modalities
from fusion.heads import (FUSION_HEAD, FUSION_HEADS, both_present, create_fusion_head, fusion_inputs,
                          save_fusion_head, split_inputs)
from fusion.pairing import modality_counts, real_pairs, synthetic_pairs

log = logging.getLogger(__name__)

PAIRINGS = ("auto", "real", "synthetic")
FIT_ON = ("validation", "crossfit")
CALIBRATIONS = ("none", "temperature")


@dataclass(frozen=True)
class FusionConfig:
    """The ``fusion`` config node (``conf/fusion/default.yaml`` says what each setting does), checked.

    scripts/run.py checks it before any branch trains, so a mistake in it costs seconds, not the
    branches' training time; a key it does not declare (``fusion.metod=mean``) is an error, not a
    silent fall-back to the default head.
    """

    method: str = "weighted"
    weight: float | None = None
    pairing: str = "auto"
    fit_on: str = "validation"
    crossfit_folds: int = 5
    calibrate: str = "none"

    def __post_init__(self) -> None:
        FUSION_HEADS.get(self.method)
        if self.weight is not None and self.method != "weighted":
            raise ValueError(f"fusion.weight fixes the cover branch's weight of method=weighted; "
                             f"method={self.method} takes none (set fusion.weight=null)")
        if self.weight is not None and not 0 <= self.weight <= 1:
            raise ValueError(f"fusion.weight is the cover branch's share, in [0, 1]; got {self.weight}")
        for name, value, allowed in (("pairing", self.pairing, PAIRINGS), ("fit_on", self.fit_on, FIT_ON),
                                     ("calibrate", self.calibrate, CALIBRATIONS)):
            if value not in allowed:
                raise ValueError(f"fusion.{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.crossfit_folds < 2:
            raise ValueError(f"fusion.crossfit_folds must be ≥ 2, got {self.crossfit_folds}")


def fusion_config(node: DictConfig | dict) -> FusionConfig:
    """The run's ``fusion`` node as a checked :class:`FusionConfig`."""
    return checked_dataclass(FusionConfig, node, "fusion")


def _probabilities(pairs: pd.DataFrame, column: str, outputs: pd.DataFrame, labels: list[str]) -> np.ndarray:
    lookup = outputs.set_index("item_id")[probability_columns(labels)]
    proba = np.full((len(pairs), len(labels)), np.nan)
    present = (pairs[column] != "").to_numpy()
    proba[present] = lookup.loc[pairs.loc[present, column]].to_numpy(float)
    return proba


def make_pairs(covers: pd.DataFrame, audio: pd.DataFrame, mode: str, seed: int) -> tuple[pd.DataFrame, str]:
    """``(pairs, pairing mode)``; ``auto`` is real when the branches share item ids, else synthetic."""
    shared = set(covers["item_id"]) & set(audio["item_id"])
    if mode == "auto":
        mode = "real" if shared else "synthetic"
    if mode == "real":
        if not shared:
            raise ValueError("fusion.pairing=real but the branches share no item ids (separate collections); "
                             "use pairing=synthetic")
        return real_pairs(covers, audio), "real"
    if mode == "synthetic":
        return synthetic_pairs(covers, audio, seed), "synthetic"
    raise ValueError(f"fusion.pairing must be one of {', '.join(PAIRINGS)}; got {mode!r}")


def _branch_probabilities(pairs: pd.DataFrame, covers: pd.DataFrame, audio: pd.DataFrame,
                          labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return (_probabilities(pairs, "cover_item_id", covers, labels),
            _probabilities(pairs, "audio_item_id", audio, labels))


def out_of_fold_inputs(fold_dirs: list[tuple[Path, Path]], mode: str, seed: int,
                       labels: list[str]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The branches' out-of-fold predictions of the training items, as a fusion input ``(X, y, pairs)``.

    ``fold_dirs`` are the (covers, audio) run folders of the inner folds over the training items;
    each predicted its held-out inner fold (its ``test`` part), so every training item appears once.
    """
    def tested(folder: Path) -> pd.DataFrame:
        table, fold_labels = read_predictions(folder)
        if fold_labels != labels:
            raise ValueError(f"{folder} was trained on {fold_labels}, not {labels}")
        return table[table["split"] == "test"]

    covers = pd.concat([tested(c) for c, _ in fold_dirs], ignore_index=True)
    audio = pd.concat([tested(a) for _, a in fold_dirs], ignore_index=True)
    for name, table in (("covers", covers), ("audio", audio)):
        if table["item_id"].duplicated().any():
            raise ValueError(f"the inner folds' {name} predictions overlap: an item was held out twice")
    pairs, _ = make_pairs(covers, audio, mode, seed)
    p_cover, p_audio = _branch_probabilities(pairs, covers, audio, labels)
    return fusion_inputs(p_cover, p_audio), pairs["y"].to_numpy(), pairs


def run_fusion(cfg: DictConfig, run_dir: Path, covers_dir: Path, audio_dir: Path,
               names: tuple[str, str] = ("image-only", "audio-only"),
               crossfit_dirs: list[tuple[Path, Path]] | None = None) -> dict[str, dict[str, Any]]:
    """Fit the fusion head, compare on test items with both modalities.

    The head is fitted on the validation items, or (``crossfit_dirs``, ``fusion.fit_on=crossfit``)
    on the branches' out-of-fold predictions of the training items, as scikit-learn's stacking
    does; then the validation-fitted head is reported beside it on the same test items. With
    ``fusion.calibrate=temperature`` each branch's probabilities are temperature-scaled (fitted on
    the same items as the head) before the head. The test items never shape either.

    Writes into ``run_dir``: the fitted head (``fusion_head.json``, used by batch scoring),
    ``pairs_pairing-<mode>.csv``, ``predictions.csv`` (fused, every val/test item) and the
    comparison files of :func:`fusion.compare.compare_modalities`. With real pairs the intervals
    also resample the split's album/artist groups. Returns the comparison rows, keyed by printed name.
    """
    settings = fusion_config(cfg.fusion)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    covers, cover_labels = read_predictions(covers_dir)
    audio, audio_labels = read_predictions(audio_dir)
    if cover_labels != audio_labels:
        raise ValueError(f"the branches were trained on different label sets: {cover_labels} vs {audio_labels}")
    labels = cover_labels
    seed = int(cfg.seed)
    pairs, pairing = make_pairs(covers, audio, settings.pairing, seed)
    pairs.to_csv(run_dir / PAIRS_FILE.format(pairing=pairing), index=False)
    p_cover, p_audio = _branch_probabilities(pairs, covers, audio, labels)
    y = pairs["y"].to_numpy()
    x = fusion_inputs(p_cover, p_audio)
    val_rows = (pairs["split"] == "val").to_numpy()
    test_rows = (pairs["split"] == "test").to_numpy()
    method, fit_on = settings.method, settings.fit_on
    if fit_on == "crossfit" and not crossfit_dirs:
        raise ValueError("fusion.fit_on=crossfit needs the inner folds' branch outputs "
                         "(fusion.protocol.crossfit makes them)")

    def fitted(x_fit: np.ndarray, y_fit: np.ndarray):  # never sees a test item
        head = create_fusion_head(method, random_state=seed, weight=settings.weight)
        if settings.calibrate == "temperature":
            head.with_temperatures(*(TemperatureScaling().fit(part, y_fit).temperature_ for part in split_inputs(x_fit)))
        return head.fit(x_fit, y_fit)

    validation_head = fitted(x[val_rows], y[val_rows])
    head, fit_items = validation_head, int(both_present(x[val_rows]).sum())
    extra_rows = {}
    if fit_on == "crossfit":
        x_oof, y_oof, _ = out_of_fold_inputs(crossfit_dirs, settings.pairing, seed, labels)
        head, fit_items = fitted(x_oof, y_oof), int(both_present(x_oof).sum())
        extra_rows[f"fused ({method}, validation-fitted)"] = validation_head.predict_proba(x[test_rows])
    save_fusion_head(run_dir / FUSION_HEAD, method, head, labels=labels, pairing=pairing, fit_on=fit_on)
    fused = head.predict_proba(x)
    write_predictions(run_dir / "predictions.csv", pairs, fused, labels)

    fitted_on = ("validation items with both modalities" if fit_on == "validation"
                 else f"out-of-fold predictions of the {len(crossfit_dirs)} inner folds' training items")
    context = {"method": method, "fitted_on": fitted_on, "fit_items": fit_items,
               "head": {"weight": getattr(head, "weight_", None),
                        "temperatures": getattr(head, "temperatures_", np.array([])).tolist() or None},
               "validation_modalities": modality_counts(pairs[val_rows]),
               "branches": {"covers": str(covers_dir), "audio": str(audio_dir)}}
    groups = pairs["group"].to_numpy()[test_rows] if pairing == "real" else None
    suffix = ", cross-fitted" if fit_on == "crossfit" else ""
    return compare_modalities(run_dir, y[test_rows], p_cover[test_rows], p_audio[test_rows], fused[test_rows], labels,
                              pairing, f"fused ({method}{suffix})", names=names, groups=groups, seed=seed,
                              context=context, item_ids=pairs["fused_id"].to_numpy()[test_rows],
                              extra_rows=extra_rows,
                              notes=[f"Fusion head fitted on {fit_items} {fitted_on}; the rows are the test items."])
