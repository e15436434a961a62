"""The comparison: image-only vs. audio-only vs. fused, on the same test items, from the branches' outputs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from engine.report import evaluate_predictions, format_classification_report, mcnemar, paired_accuracy_difference, \
    plot_confusions, write_json
from engine.run import write_model_card
from engine.summary import results_table
from fusion.heads import create_fusion
from fusion.pairing import modality_counts, real_pairs, synthetic_pairs

log = logging.getLogger(__name__)
FUSION_HEAD = "fusion_head.joblib"


def read_branch_outputs(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """A branch's ``predictions.csv`` and its class order (from the ``p_<class>`` columns)."""
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no branch outputs at {path}; train the branch first")
    table = pd.read_csv(path, dtype={"item_id": str}, keep_default_na=False)
    return table, [c[2:] for c in table.columns if c.startswith("p_")]


def _probabilities(pairs: pd.DataFrame, column: str, outputs: pd.DataFrame, labels: list[str]) -> np.ndarray:
    lookup = outputs.set_index("item_id")[[f"p_{label}" for label in labels]]
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
    raise ValueError(f"fusion.pairing must be auto, real or synthetic; got {mode!r}")


def run_fusion(cfg: DictConfig, run_dir: Path, covers_dir: Path, audio_dir: Path,
               names: tuple[str, str] = ("image-only", "audio-only")) -> dict[str, dict[str, Any]]:
    """Fit the fusion head on validation items, compare on test items with both modalities.

    Writes into ``run_dir``: the fitted head (``fusion_head.joblib``, used by batch scoring), ``pairs.csv``, ``predictions.csv`` (fused, every val/test item),
    ``metrics_pairing-<mode>.json``, ``comparison_pairing-<mode>.md`` and
    ``confusions_pairing-<mode>.png`` (the three confusion matrices side by side).
    Returns the three comparison rows (metrics dicts), keyed by printed name.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    covers, cover_labels = read_branch_outputs(covers_dir)
    audio, audio_labels = read_branch_outputs(audio_dir)
    if cover_labels != audio_labels:
        raise ValueError(f"the branches were trained on different label sets: {cover_labels} vs {audio_labels}")
    labels = cover_labels
    seed = int(cfg.seed)
    pairs, pairing = make_pairs(covers, audio, cfg.fusion.pairing, seed)
    pairs.to_csv(run_dir / f"pairs_pairing-{pairing}.csv", index=False)
    p_cover = _probabilities(pairs, "cover_item_id", covers, labels)
    p_audio = _probabilities(pairs, "audio_item_id", audio, labels)
    y = pairs["y"].to_numpy()
    has_both = ~np.isnan(p_cover).any(1) & ~np.isnan(p_audio).any(1)
    fit_rows = (pairs["split"] == "val").to_numpy()
    test_rows = (pairs["split"] == "test").to_numpy()
    head = create_fusion(cfg.fusion.method, seed=seed, weight=cfg.fusion.get("weight"))
    head.fit(p_cover[fit_rows], p_audio[fit_rows], y[fit_rows])  # never sees a test item
    joblib.dump({"head": head, "labels": labels, "pairing": pairing}, run_dir / FUSION_HEAD)
    fused = head.predict_proba(p_cover, p_audio)

    table = pairs.assign(predicted=[labels[i] for i in fused.argmax(1)])
    for i, label in enumerate(labels):
        table[f"p_{label}"] = fused[:, i]
    table.to_csv(run_dir / "predictions.csv", index=False)

    both = test_rows & has_both
    if both.sum() == 0:
        raise ValueError("no test items with both modalities; nothing to compare")
    tag = f"pairing: {pairing}"
    method = cfg.fusion.method
    predictions = {names[0]: p_cover[both].argmax(1), names[1]: p_audio[both].argmax(1),
                   f"fused ({method})": fused[both].argmax(1)}
    rows = {f"{name} · {tag}": evaluate_predictions(y[both], pred, labels, seed=seed)
            for name, pred in predictions.items()}
    fused_pred = predictions[f"fused ({method})"]
    tests = {name: {"mcnemar": mcnemar(y[both], fused_pred, pred),
                    "fused_minus_branch": paired_accuracy_difference(y[both], fused_pred, pred, seed=seed)}
             for name, pred in list(predictions.items())[:2]}
    all_test = evaluate_predictions(y[test_rows], fused[test_rows].argmax(1), labels, seed=seed)
    counts = {part: modality_counts(pairs[pairs["split"] == part]) for part in ("val", "test")}
    summary = {
        "pairing": pairing, "method": method, "labels": labels, "fitted_on": "validation items with both modalities",
        "fit_items": int((fit_rows & has_both).sum()), "head": {"weight": getattr(head, "weight_", None)},
        "modalities": counts, "comparison_items": int(both.sum()),
        "rows": rows, "fused_vs_branch": tests,
        "all_test_items_fused_or_single": {k: all_test[k] for k in ("n", "accuracy", "ci95")},
        "branches": {"covers": str(covers_dir), "audio": str(audio_dir)},
    }
    write_json(run_dir / f"metrics_pairing-{pairing}.json", summary)
    write_model_card(run_dir, branch="fusion", pairing=pairing, method=method, labels=labels,
                     metrics={name: {k: m[k] for k in ("n", "accuracy", "ci95")} for name, m in rows.items()})
    lines = [f"# image vs. audio vs. fused ({tag})", "", results_table(rows), "",
             f"Same {int(both.sum())} test items in every row; fusion head fitted on {int((fit_rows & has_both).sum())} "
             f"validation items. Test items by modality: {counts['test']}; all {all_test['n']} test items "
             f"(single-modality ones scored by their branch): accuracy {all_test['accuracy']:.3f}.", ""]
    for name, test in tests.items():
        diff = test["fused_minus_branch"]
        lines.append(f"- fused vs {name}: McNemar p = {test['mcnemar']['p_value']:.4f}; accuracy difference "
                     f"{diff['difference']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]")
    if pairing == "synthetic":
        lines += ["", "Synthetic pairing: covers and audio come from different collections, paired at random "
                      "within genre and split. Fusion gains here overstate what real tracks would show."]
    (run_dir / f"comparison_pairing-{pairing}.md").write_text("\n".join(lines) + "\n")
    (run_dir / "report.txt").write_text(
        "\n\n".join(f"{name}\n{format_classification_report(m)}" for name, m in rows.items()))
    plot_confusions(list(rows.items()), run_dir / f"confusions_pairing-{pairing}.png")
    log.info("fusion (%s, %s): %s", method, tag, {k: round(m["accuracy"], 4) for k, m in rows.items()})
    for name, metrics in rows.items():
        metrics["pairing"] = pairing
    return rows
