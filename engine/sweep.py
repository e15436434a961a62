"""Collect every run folder of a Hydra multirun sweep into one table: mean ± std over seeds."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from engine.cli import FAILURE_FILE
from engine.report import HEADLINE as METRICS

#: The kept epoch's validation accuracy, beside the test metrics: what settings are chosen by. Rows that were
#: not trained (fusion, zero-shot) have none.
VALIDATION = "val_accuracy"
SUMMARISED = (VALIDATION, *METRICS)


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per (run, result row): its overrides as columns, then the metrics.

    A run folder is any folder below ``sweep_dir`` holding ``results.json`` and
    ``.hydra/overrides.yaml``; runs that failed (no ``results.json``) are listed with ``status``
    ``failed: …`` and why (the last line of the job's error file: the error, or a bug's exception).
    """
    records = []
    for overrides_file in sorted(Path(sweep_dir).rglob(".hydra/overrides.yaml")):
        run = overrides_file.parent.parent
        overrides = dict(o.split("=", 1) for o in yaml.safe_load(overrides_file.read_text()) or [] if "=" in o)
        results_file = run / "results.json"
        if not results_file.is_file():
            failure = run / FAILURE_FILE
            lines = failure.read_text().strip().splitlines() if failure.is_file() else []
            why = lines[-1] if lines else "no results.json"
            records.append({"run": str(run), **overrides, "status": f"failed: {why}"})
            continue
        for name, metrics in json.loads(results_file.read_text()).items():
            records.append({"run": str(run), **overrides, "status": "ok", "row": name,
                            VALIDATION: metrics.get(VALIDATION), **{m: metrics[m] for m in METRICS}})
    if not records:
        raise FileNotFoundError(f"no Hydra run folders (.hydra/overrides.yaml) under {sweep_dir}")
    runs = pd.DataFrame(records)
    if VALIDATION in runs:
        runs[VALIDATION] = pd.to_numeric(runs[VALIDATION])  # None (an untrained row) as NaN, not an object column
    return runs


def summarise(runs: pd.DataFrame, over: str = "seed") -> pd.DataFrame:
    """Mean, std and count of each metric per (overrides except ``over``, result row)."""
    ok = runs[runs["status"] == "ok"]
    # Overrides equal in every run (e.g. trainer.progress) only clutter the table.
    keys = [c for c in ok.columns if c not in {"run", "status", over, *SUMMARISED}
            and (c == "row" or ok[c].nunique(dropna=False) > 1)]
    grouped = ok.groupby(keys, dropna=False)[list(SUMMARISED)]
    table = grouped.agg(["mean", "std", "count"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    return table.reset_index()


def _mean_std(row: pd.Series, metric: str) -> str:
    if pd.isna(row[metric + "_mean"]):
        return "–"
    return f"{row[metric + '_mean']:.3f} ± {0 if pd.isna(row[metric + '_std']) else row[metric + '_std']:.3f}"


def to_markdown(summary: pd.DataFrame) -> str:
    keys = [c for c in summary.columns if not any(c.startswith(m + "_") for m in SUMMARISED)]
    lines = ["| " + " | ".join(keys + list(SUMMARISED) + ["seeds"]) + " |",
             "|" + "---|" * (len(keys) + len(SUMMARISED) + 1)]
    for _, r in summary.iterrows():
        cells = [str(r[k]) for k in keys] + [_mean_std(r, m) for m in SUMMARISED]
        lines.append("| " + " | ".join(cells + [str(int(r["accuracy_count"]))]) + " |")
    return "\n".join(lines)
