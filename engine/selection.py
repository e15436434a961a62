"""Model choice on validation inside a run: candidates trained on the training part, one kept.

A branch config with ``select`` names candidates, each a set of overrides of the branch's ``model``
and ``trainer`` (``{}``: the branch's own recipe). Each is trained and reported by the branch's own
train function into ``candidates/<name>/``; the one with the best score on the *validation* rows of
its ``predictions.csv`` is kept, and its folder is copied into the branch's run folder, so fusion,
scoring and reports read the chosen model as they read any run. Test rows are never read for the
choice (their scores are listed after it, as information). The choice and every candidate's scores
go to ``metrics.json``, the model card and the log.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from engine.io import update_json
from engine.predictions import probabilities, read_predictions
from engine.report import log_loss

log = logging.getLogger(__name__)

#: What a choice may be made by: validation log-loss (lower is better; the default, since accuracy on
#: a few dozen validation items ties often) or validation accuracy (higher is better).
SELECT_BY = ("val_log_loss", "val_accuracy")
#: Where each candidate's run folder goes, inside the branch's.
CANDIDATES_DIR = "candidates"


def candidate_configs(cfg: DictConfig, branch_key: str) -> dict[str, DictConfig]:
    """One whole config per candidate of ``cfg[branch_key].select``: the branch with that candidate's
    ``model``/``trainer`` laid over its own, without ``select`` (an audio branch is named
    ``<branch name>/<candidate>``)."""
    branch = cfg[branch_key]
    select = branch.select
    by = select.get("by", SELECT_BY[0])
    if by not in SELECT_BY:
        raise ValueError(f"{branch_key}.select.by must be one of {list(SELECT_BY)}, got {by!r}")
    candidates = select.get("candidates") or {}
    if not candidates:
        raise ValueError(f"{branch_key}.select.candidates is empty: name at least one candidate, or set "
                         f"{branch_key}.select=null to train the branch's own model alone")
    configs = {}
    for name, overrides in candidates.items():
        unknown = sorted(set(overrides or {}) - {"model", "trainer"})
        if unknown:
            raise ValueError(f"{branch_key}.select.candidates.{name}: unknown key(s) {unknown}; a candidate "
                             "overrides the branch's model and trainer only")
        candidate = copy.deepcopy(cfg)
        with open_dict(candidate):
            node = candidate[branch_key]
            del node["select"]
            node.merge_with(overrides or {})
            if "name" in node:
                node.name = f"{branch.name}/{name}"
        configs[str(name)] = candidate
    return configs


def validation_scores(predictions_csv: str | Path) -> dict[str, float]:
    """Log-loss and accuracy of a run's ``predictions.csv`` on its validation rows alone."""
    table, labels = read_predictions(predictions_csv)
    val = table[table["split"] == "val"]
    if val.empty:
        raise ValueError(f"{predictions_csv} has no validation rows: a choice on validation needs a split "
                         "with a validation part")
    proba = probabilities(val, labels)
    y = val["y"].astype(int).to_numpy()
    return {"val_log_loss": round(log_loss(proba, y), 6),
            "val_accuracy": round(float((proba.argmax(1) == y).mean()), 6), "n_val": int(len(val))}


def choose(scores: dict[str, dict[str, float]], by: str) -> str:
    """The best candidate by ``by`` (ties: the first listed)."""
    sign = 1.0 if by == "val_log_loss" else -1.0
    return min(scores, key=lambda name: (sign * scores[name][by], list(scores).index(name)))


def train_with_selection(cfg: DictConfig, branch_key: str, run_dir: Path,
                         train: Callable[[DictConfig, Path], dict[str, Any]],
                         check: Callable[[DictConfig], None] | None = None) -> dict[str, Any]:
    """Train every candidate of ``cfg[branch_key].select`` with ``train(config, folder)``, keep the best on
    validation in ``run_dir`` and return its test metrics with the ``selection`` record.

    ``check(config)`` is run on every candidate before the first trains, so a wrong candidate fails at once.
    """
    configs = candidate_configs(cfg, branch_key)
    for candidate in configs.values() if check is not None else ():
        check(candidate)
    by = cfg[branch_key].select.get("by", SELECT_BY[0])
    scores: dict[str, dict[str, Any]] = {}
    for name, candidate in configs.items():
        folder = run_dir / CANDIDATES_DIR / name
        metrics = train(candidate, folder)
        scores[name] = {**validation_scores(folder / "predictions.csv"),
                        "test_accuracy": metrics["accuracy"]}
    chosen = choose(scores, by)
    shutil.copytree(run_dir / CANDIDATES_DIR / chosen, run_dir, dirs_exist_ok=True)
    selection = {"by": by, "chosen": chosen, "candidates": scores,
                 "test_rows": "test accuracies are listed for information; the choice read validation rows only"}
    log.info("%s: validation chose %s by %s (%s)", branch_key, chosen, by,
             ", ".join(f"{name} {s[by]:.4f}" for name, s in scores.items()))
    best_on_test = max(scores, key=lambda name: scores[name]["test_accuracy"])
    if scores[best_on_test]["test_accuracy"] > scores[chosen]["test_accuracy"]:
        selection["note"] = (f"on test, {best_on_test} ({scores[best_on_test]['test_accuracy']:.4f}) beats the "
                             f"chosen {chosen} ({scores[chosen]['test_accuracy']:.4f}); validation could not tell")
        log.warning("%s: %s", branch_key, selection["note"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key, reference in metrics.items():
        # A reference the run printed beside the chosen model (audio: scikit-learn's logistic regression).
        if key.startswith("reference_") and reference["model_minus_reference"]["difference"] < 0:
            gap = reference["model_minus_reference"]
            selection[f"below_{key}"] = (
                f"the chosen {chosen} is below {key} on test by {-gap['difference']:.4f} (paired 95% interval of "
                f"the difference {gap['ci95'][0]:+.4f} to {gap['ci95'][1]:+.4f}); validation chose it all the same")
            log.warning("%s: %s", branch_key, selection[f"below_{key}"])
    for file in ("metrics.json", "model_card.json"):
        update_json(run_dir / file, selection=selection)
    return {**metrics, "selection": selection}


def write_selection_summary(run_dir: Path) -> Path | None:
    """``selections.md`` in ``run_dir``: every branch folder under it whose model was chosen on validation
    (each fold and inner fold of a k-fold run), with the choice, each candidate's validation score and the
    chosen model's test accuracy. ``None`` when nothing under ``run_dir`` was chosen so."""
    rows = []
    for path in sorted(run_dir.glob("**/metrics.json")):
        if CANDIDATES_DIR in path.relative_to(run_dir).parts:
            continue
        selection = json.loads(path.read_text()).get("selection")
        if not selection:
            continue
        by, scores = selection["by"], selection["candidates"]
        rows.append(f"| {path.parent.relative_to(run_dir)} | **{selection['chosen']}** | "
                    + ", ".join(f"{name} {s[by]:.3f}" for name, s in scores.items())
                    + f" | {scores[selection['chosen']]['test_accuracy']:.3f} | "
                    + f"{max(s['test_accuracy'] for s in scores.values()):.3f} |")
    if not rows:
        return None
    path = run_dir / "selections.md"
    path.write_text("# Models chosen on validation\n\n"
                    f"Each branch folder's candidates by {by} on its validation items (the choice); the test "
                    "accuracies after it took no part in the choice.\n\n"
                    f"| folder | chosen | {by} of each candidate | test accuracy (chosen) | best test accuracy "
                    "of any candidate |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return path
