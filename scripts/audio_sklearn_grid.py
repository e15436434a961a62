"""scikit-learn's logistic regression and MLP, each chosen on validation, on the audio branch's own inputs.

Is the feature MLP's gap to logistic regression the trainer's, or the model class's?

Usage: .venv/bin/python scripts/audio_sklearn_grid.py --out DIR [--seeds 1,2,3] [--choose-by val_log_loss]
       [OVERRIDE ...]

OVERRIDEs are the main job's (``labels=gtzan10 audio.model.log_variances=true`` …): the items, split
and inputs (log-scale columns included) are the ones ``scripts/run.py branches=[audio]`` with the same
overrides trains on. Every setting of :data:`GRID` is fitted on the train part (MLPs once per seed);
in each family the setting with the best mean validation accuracy (or, ``--choose-by val_log_loss``,
the lowest mean validation log-loss) is chosen, and its test accuracy is reported per seed, paired
against the reference (logistic regression with C = 1, the audio branch's ``reference_logreg``).
Writes ``DIR/grid.csv`` (every fit's validation accuracy and log-loss, and test accuracy), a report
folder per chosen fit (``DIR/<family>-s<seed>/``) and for the reference (``DIR/reference/``), each
with the test items' ``predictions.csv`` (``scripts/compare_runs.py`` pairs them with a trained
model's run) and ``DIR/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from audio.feature_mlp import FeatureMLP
from audio.models import build_audio_model, model_kind
from audio.train import audio_branch_inputs, sklearn_on_model_inputs
from engine.cli import report_user_errors
from data.config import compose_config
from engine.io import write_json
from engine.report import paired_accuracy_difference
from engine.run import all_class_proba, fit_estimator_and_report, machine_info
from engine.report import log_loss

log = logging.getLogger("genrefusion")
#: Settings per family. C is scikit-learn's inverse penalty; alpha its MLP's L2 penalty.
GRID: dict[str, list[dict[str, Any]]] = {
    "logreg": [{"C": c} for c in (0.01, 0.1, 1.0, 10.0)],
    "mlp": [{"hidden_layer_sizes": h, "alpha": a} for h in ((64,), (256,), (256, 128)) for a in (0.01, 0.1, 1.0, 10.0)],
}
REFERENCE = ("logreg", {"C": 1.0})
#: Validation criteria a setting can be chosen by, and whether higher is better.
CRITERIA = {"val_accuracy": True, "val_log_loss": False}


def _estimator(family: str, setting: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if family == "logreg":
        return LogisticRegression(max_iter=5000, **setting)
    return MLPClassifier(max_iter=2000, random_state=seed, **setting)


def _seeds_of(family: str, seeds: list[int]) -> list[int]:
    return seeds if family == "mlp" else seeds[:1]  # lbfgs logistic regression does not depend on a seed


def _seed_list(text: str) -> list[int]:
    """``1,2,3`` → ``[1, 2, 3]`` (argparse names this function in its message when the text is not that)."""
    return [int(value) for value in text.split(",")]


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=_seed_list, default=[1, 2, 3],
                        help="MLP seeds, comma-separated (default 1,2,3)")
    parser.add_argument("--choose-by", choices=list(CRITERIA), default="val_accuracy",
                        help="the validation criterion each family's setting is chosen by (default val_accuracy)")
    parser.add_argument("overrides", nargs="*", help="main-job overrides (labels=…, audio.model.…)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = compose_config(["branches=[audio]", "trainer.progress=false", *args.overrides])
    args.out.mkdir(parents=True, exist_ok=True)
    model_cfg = OmegaConf.to_container(cfg.audio.model, resolve=True)
    kinds, segments = model_kind(model_cfg).inputs, cfg.audio.get("segments")
    if segments or kinds != ("features",):
        raise ValueError(f"audio={cfg.audio.name} reads {list(kinds)} (segments: {segments}); "
                         "this grid compares per-clip feature models: use audio=feature_mlp or feature_linear")
    prepared, inputs, spec = audio_branch_inputs(cfg, args.out)
    network = build_audio_model(model_cfg, prepared.labels)
    log_mask = (network.log_mask.cpu().numpy() if isinstance(network, FeatureMLP)
                else np.zeros(len(spec["features"]), dtype=bool))
    parts = {p: inputs.subset((inputs.items["split"] == p).to_numpy()) for p in ("train", "val", "test")}
    empty = [p for p, part in parts.items() if not len(part.items)]
    if empty:
        raise ValueError(f"split {prepared.split_path.name} has no {' or '.join(empty)} items with features; "
                         "the grid fits on train, chooses on val and reports on test")
    x = {p: part.arrays["features"] for p, part in parts.items()}
    y = {p: part.items["y"].to_numpy() for p, part in parts.items()}

    rows = []
    for family, settings in GRID.items():
        for setting in settings:
            for seed in _seeds_of(family, args.seeds):
                model = sklearn_on_model_inputs(_estimator(family, setting, seed), log_mask).fit(x["train"], y["train"])
                rows.append({"family": family, "setting": json.dumps(setting), "seed": seed,
                             **{f"{p}_accuracy": float((model.predict(x[p]) == y[p]).mean()) for p in ("val", "test")},
                             "val_log_loss": log_loss(all_class_proba(model, x["val"], len(prepared.labels)),
                                                      y["val"])})
                log.info("%s %s seed %d: val %.3f (log-loss %.3f), test %.3f", family, setting, seed,
                         rows[-1]["val_accuracy"], rows[-1]["val_log_loss"], rows[-1]["test_accuracy"])
    grid = pd.DataFrame(rows)
    grid.to_csv(args.out / "grid.csv", index=False)

    card = {"data": prepared.name, **prepared.describe(), "split_name": prepared.split_path.stem, "inputs": spec,
            "log_columns": int(log_mask.sum())}

    def report(family: str, setting: dict[str, Any], seed: int, folder: str) -> tuple[dict[str, Any], np.ndarray]:
        metrics, proba = fit_estimator_and_report(
            sklearn_on_model_inputs(_estimator(family, setting, seed), log_mask), x["train"], y["train"],
            parts["test"].items, x["test"], prepared.labels, args.out / folder,
            title=f"scikit-learn {family} {setting} · seed {seed} · split {card['split_name']}", card=card, seed=seed)
        return metrics, proba.argmax(1)

    reference_metrics, reference_predicted = report(*REFERENCE, args.seeds[0], "reference")
    majority = np.bincount(y["train"], minlength=len(prepared.labels)).argmax()
    summary: dict[str, Any] = {
        "command": " ".join([".venv/bin/python scripts/audio_sklearn_grid.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "data": card, "n": {p: len(v) for p, v in y.items()},
        "majority_class": {"label": prepared.labels[majority], "test_accuracy": float((y["test"] == majority).mean())},
        "reference": {"family": REFERENCE[0], "setting": REFERENCE[1], "test_accuracy": reference_metrics["accuracy"],
                      "ci95": reference_metrics["ci95"]["accuracy"]},
        "chosen": {}, "machine": machine_info(),
    }
    summary["chosen_by"] = args.choose_by
    mean_val = grid.groupby(["family", "setting"], sort=False)[args.choose_by].mean()
    for family in GRID:
        best = mean_val[family].idxmax if CRITERIA[args.choose_by] else mean_val[family].idxmin
        setting_text = best()  # first of equals, in grid order
        setting = json.loads(setting_text)
        fits = grid[(grid["family"] == family) & (grid["setting"] == setting_text)]
        per_seed = []
        for seed in fits["seed"]:
            metrics, predicted = report(family, setting, int(seed), f"{family}-s{seed}")
            per_seed.append({"seed": int(seed), "test_accuracy": metrics["accuracy"],
                             "ci95": metrics["ci95"]["accuracy"],
                             "minus_reference": paired_accuracy_difference(y["test"], predicted, reference_predicted,
                                                                           seed=int(seed))})
        tests = [s["test_accuracy"] for s in per_seed]
        summary["chosen"][family] = {"setting": setting, args.choose_by: float(mean_val[family][setting_text]),
                                     "test_accuracy_mean": float(np.mean(tests)),
                                     "test_accuracy_std": float(np.std(tests)),
                                     "per_seed": per_seed}
        log.info("%s chosen on validation: %s (%s %.3f) → test %.3f ± %.3f", family, setting, args.choose_by,
                 mean_val[family][setting_text], np.mean(tests), np.std(tests))
    write_json(args.out / "summary.json", summary)
    log.info("written %s", args.out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
