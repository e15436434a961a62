"""The three-way comparison: image-only vs. audio-only vs. fused on the same items, beside the majority class.

One report path for every comparison: the main job's test items (after fitting the head on
validation items), and a trained model's scores on a labelled catalogue it never saw
(``scripts/evaluate_tracks.py``). Rows are on the items that have both modalities; each gets
its bootstrap interval (and, with groups, an interval that resamples whole albums/artists), and
the fused row is tested against each branch (McNemar, paired bootstrap difference).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.io import atomic_path, write_json, write_text_atomic
from engine.predictions import present, probability_columns
from engine.report import (evaluate_predictions, expected_calibration_error, format_classification_report, headline,
                           log_loss, mcnemar, paired_accuracy_difference, plot_confusions)
from engine.run import write_model_card
from engine.summary import results_table
from fusion.calibration import plot_reliability

log = logging.getLogger(__name__)


def majority_name(label: str) -> str:
    return f"majority class (always '{label}')"


@dataclass
class Comparison:
    """The computed comparison of one set of items: what :func:`write_comparison` writes."""

    pairing: str
    labels: list[str]
    #: The printed rows, majority class first, the tested (fused) row last; each metrics dict has its intervals.
    rows: dict[str, dict[str, Any]]
    #: Each probabilistic row's probabilities on the compared items, with those items' classes.
    probabilities: dict[str, np.ndarray]
    y: np.ndarray
    #: The last row against each other row (by name, without the pairing): McNemar and the paired accuracy difference.
    tests: dict[str, dict[str, Any]]
    modalities: dict[str, int]
    #: Every item with a modality, single-modality ones scored by their branch.
    all_items: dict[str, Any]
    #: Whether the intervals also resample groups.
    grouped: bool

    @property
    def tested_row(self) -> str:
        """The last row's name, without the pairing."""
        return next(reversed(self.rows)).split(" · pairing:")[0]


def compute_comparison(y: np.ndarray, p_cover: np.ndarray, p_audio: np.ndarray, fused: np.ndarray,
                       labels: Sequence[str], pairing: str, fused_name: str,
                       names: tuple[str, str] = ("image-only", "audio-only"), groups: Sequence[str] | None = None,
                       seed: int = 0, extra_rows: dict[str, np.ndarray] | None = None) -> Comparison:
    """The branches, any ``extra_rows`` and the fused model compared on the items (rows) that have both
    modalities, beside the majority class; nothing is written (see :func:`compare_modalities`)."""
    has_cover, has_audio = present(p_cover), present(p_audio)
    # A one-branch model (no cover or no audio model at all) is compared with the majority class alone.
    branches = [(name, p, has) for name, p, has in zip(names, (p_cover, p_audio), (has_cover, has_audio)) if has.any()]
    both = np.logical_and.reduce([has for _, _, has in branches]) if branches else np.zeros(len(y), bool)
    if not both.any():
        raise ValueError("no items scored by every branch the model has; nothing to compare")
    y_both = np.asarray(y)[both]
    groups_both = None if groups is None else np.asarray(groups, dtype=str)[both]
    majority = int(np.bincount(y_both, minlength=len(labels)).argmax())
    tag = f"pairing: {pairing}"
    probabilities = {name: p[both] for name, p, _ in branches}
    if len(branches) == 2:
        probabilities.update({name: p[both] for name, p in (extra_rows or {}).items()})
        probabilities[fused_name] = fused[both]
    predictions = {majority_name(labels[majority]): np.full(len(y_both), majority),
                   **{name: p.argmax(1) for name, p in probabilities.items()}}
    rows = {f"{name} · {tag}": evaluate_predictions(y_both, pred, labels, seed=seed, groups=groups_both)
            for name, pred in predictions.items()}
    for name, proba in probabilities.items():
        rows[f"{name} · {tag}"].update(log_loss=log_loss(proba, y_both), ece=expected_calibration_error(proba, y_both))
    last_pred = list(predictions.values())[-1]
    tests = {name: {"mcnemar": mcnemar(y_both, last_pred, pred),
                    "last_minus_other": paired_accuracy_difference(y_both, last_pred, pred, seed=seed,
                                                                   groups=groups_both)}
             for name, pred in list(predictions.items())[:-1]}
    either = has_cover | has_audio
    modalities = {"both": int(both.sum()), "cover_only": int((has_cover & ~has_audio).sum()),
                  "audio_only": int((~has_cover & has_audio).sum()), "neither": int((~either).sum())}
    return Comparison(pairing=pairing, labels=list(labels), rows=rows, probabilities=probabilities, y=y_both,
                      tests=tests, modalities=modalities, grouped=groups_both is not None,
                      all_items=evaluate_predictions(np.asarray(y)[either], fused[either].argmax(1), labels, seed=seed))


def comparison_text(comparison: Comparison, groups_are: str = "album/artist groups", notes: Sequence[str] = ()) -> str:
    """``comparison_pairing-<mode>.md``: the table, the items, calibration, group intervals and the tests."""
    rows, tag, n = comparison.rows, f"pairing: {comparison.pairing}", comparison.modalities["both"]
    lines = [f"# image vs. audio vs. fused ({tag})", "", results_table(rows), "",
             f"Same {n} items in every row. Items by modality: {comparison.modalities}; all "
             f"{comparison.all_items['n']} items with a modality (single-modality ones scored by their branch): "
             f"accuracy {comparison.all_items['accuracy']:.3f}.", ""]
    lines += ["Calibration (same items): " + "; ".join(f"{name}: log-loss {rows[f'{name} · {tag}']['log_loss']:.3f}, "
                                                     f"ECE {rows[f'{name} · {tag}']['ece']:.3f}"
                                                     for name in comparison.probabilities), ""]
    if comparison.grouped:
        lines.append(f"Intervals resampling the {rows[next(iter(rows))]['n_groups']} {groups_are} instead of "
                     "items (items of one group are not independent):")
        lines += [f"- {name}: accuracy [{m['ci95_by_group']['accuracy'][0]:.3f}, "
                  f"{m['ci95_by_group']['accuracy'][1]:.3f}]" for name, m in rows.items()]
        lines.append("")
    last_name = comparison.tested_row
    for name, test in comparison.tests.items():
        diff = test["last_minus_other"]
        by_group = (f"; by group [{diff['ci95_by_group'][0]:+.3f}, {diff['ci95_by_group'][1]:+.3f}]"
                    if "ci95_by_group" in diff else "")
        lines.append(f"- {last_name} vs {name}: McNemar p = {test['mcnemar']['p_value']:.4f}; accuracy difference "
                     f"{diff['difference']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]{by_group}")
    if comparison.pairing == "synthetic":
        lines += ["", "Synthetic pairing: covers and audio come from different collections, paired at random "
                      "within genre and split. Fusion gains here overstate what real tracks would show."]
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def write_comparison(run_dir: Path, comparison: Comparison, context: dict[str, Any] | None = None,
                     groups_are: str = "album/artist groups", notes: Sequence[str] = ()) -> None:
    """``metrics_pairing-<mode>.json``, the model card, ``comparison_pairing-<mode>.md``, ``report.txt``,
    ``confusions_pairing-<mode>.png`` and ``reliability_pairing-<mode>.png`` of a computed comparison."""
    pairing, rows = comparison.pairing, comparison.rows
    summary = {"pairing": pairing, "labels": comparison.labels, **(context or {}), "modalities": comparison.modalities,
               "comparison_items": comparison.modalities["both"], "rows": rows,
               "tested_row": comparison.tested_row, "tested_vs_other": comparison.tests,
               "all_items_fused_or_single": headline(comparison.all_items, ["accuracy"])}
    write_json(run_dir / f"metrics_pairing-{pairing}.json", summary)
    write_model_card(run_dir, pairing=pairing, labels=comparison.labels, **(context or {}),
                     metrics={name: headline(m) for name, m in rows.items()})
    write_text_atomic(run_dir / f"comparison_pairing-{pairing}.md", comparison_text(comparison, groups_are, notes))
    write_text_atomic(run_dir / "report.txt",
                      "\n\n".join(f"{name}\n{format_classification_report(m)}" for name, m in rows.items()))
    plot_reliability([(name, proba, comparison.y) for name, proba in comparison.probabilities.items()],
                     run_dir / f"reliability_pairing-{pairing}.png")
    plot_confusions(list(rows.items())[1:], run_dir / f"confusions_pairing-{pairing}.png")


def compare_modalities(run_dir: str | Path, y: np.ndarray, p_cover: np.ndarray, p_audio: np.ndarray,
                       fused: np.ndarray, labels: Sequence[str], pairing: str, fused_name: str,
                       names: tuple[str, str] = ("image-only", "audio-only"), groups: Sequence[str] | None = None,
                       seed: int = 0, context: dict[str, Any] | None = None, notes: Sequence[str] = (),
                       item_ids: Sequence[str] | None = None,
                       extra_rows: dict[str, np.ndarray] | None = None,
                       groups_are: str = "album/artist groups") -> dict[str, dict[str, Any]]:
    """Compare the branches and the fused model on the items (rows) that have both modalities, and write it.

    ``y`` and the ``(n, k)`` probabilities are of every item to report on (e.g. every test item);
    single-modality items are counted and scored by their branch in ``all_items_fused_or_single``.
    A one-branch model (every row of the other modality NaN) gets the majority class and that
    branch. ``extra_rows`` (other fused probabilities of the same items, e.g. another head) come
    before the fused row. The last row (fused, or the one branch) is tested against each other row.
    With ``groups``, intervals also resample whole groups (``groups_are`` names them in the report).
    Each probabilistic row also gets its log-loss and expected calibration error, and
    ``reliability_pairing-<mode>.png`` draws their reliability diagrams.
    Writes what :func:`write_comparison` writes and ``comparison_items.csv`` (every item's three probability
    vectors, what pooling k folds reads) into ``run_dir``. Returns the printed rows (metrics dicts,
    each with ``pairing``): the majority class first, the fused model last.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_comparison_items(run_dir, item_ids, groups, y, {names[0]: p_cover, names[1]: p_audio, **(extra_rows or {}),
                                                           fused_name: fused}, labels)
    comparison = compute_comparison(y, p_cover, p_audio, fused, labels, pairing, fused_name, names=names,
                                    groups=groups, seed=seed, extra_rows=extra_rows)
    write_comparison(run_dir, comparison, context=context, groups_are=groups_are, notes=notes)
    log.info("comparison (pairing: %s): %s", pairing, {k: round(m["accuracy"], 4) for k, m in comparison.rows.items()})
    return {name: {**metrics, "pairing": pairing} for name, metrics in comparison.rows.items()}


COMPARISON_ITEMS = "comparison_items.csv"
#: The fused items of a run (one row per item: its cover and audio item ids, split, label), by pairing.
PAIRS_FILE = "pairs_pairing-{pairing}.csv"
SEPARATOR = " | "


def write_comparison_items(run_dir: Path, item_ids: Sequence[str] | None, groups: Sequence[str] | None,
                           y: np.ndarray, probabilities: dict[str, np.ndarray], labels: Sequence[str]) -> None:
    """``comparison_items.csv``: each compared item's id, group, true class and every row's probabilities
    (columns ``<row name> | p_<class>``, rows in printed order)."""
    table = pd.DataFrame({"item_id": list(item_ids) if item_ids is not None else range(len(y)),
                          "group": list(groups) if groups is not None else "", "y": np.asarray(y)})
    for name, proba in probabilities.items():
        table[[f"{name}{SEPARATOR}{c}" for c in probability_columns(labels)]] = proba
    with atomic_path(run_dir / COMPARISON_ITEMS) as temporary:
        table.to_csv(temporary, index=False)


def read_comparison_items(run_dir: Path, labels: Sequence[str]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """What :func:`write_comparison_items` wrote: the item table and ``{row name: (n, k) probabilities}``."""
    table = pd.read_csv(Path(run_dir) / COMPARISON_ITEMS, dtype={"item_id": str, "group": str},
                        keep_default_na=False)
    names = list(dict.fromkeys(c.split(SEPARATOR)[0] for c in table.columns if SEPARATOR in c))
    return table, {name: table[[f"{name}{SEPARATOR}{c}" for c in probability_columns(labels)]].replace("", np.nan)
                   .to_numpy(dtype=float) for name in names}
