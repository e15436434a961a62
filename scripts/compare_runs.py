"""Paired comparison of two or more runs on their common test items (same split).

Usage: .venv/bin/python scripts/compare_runs.py RUN_A RUN_B [RUN_C ...]
Each RUN is a branch run folder with predictions.csv. Prints each run's accuracy on the common
test items and, for the first run against each other, the accuracy difference with a paired
bootstrap 95% interval and McNemar's exact test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli import report_user_errors
from engine.io import write_json
from engine.predictions import read_predictions
from engine.report import evaluate_predictions, mcnemar, paired_accuracy_difference


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("need at least two runs")
    tables, label_orders = [], []
    for run in args.runs:
        table, labels = read_predictions(run)
        tables.append(table[table["split"] == "test"].set_index("item_id"))
        label_orders.append(labels)
    if any(order != label_orders[0] for order in label_orders):
        parser.error(f"the runs have different label sets: {label_orders}")
    common = sorted(set.intersection(*(set(t.index) for t in tables)))
    if not common:
        parser.error("the runs share no test items (different splits or data)")
    y = tables[0].loc[common, "y"].astype(int).to_numpy()
    predicted = [t.loc[common, "predicted"].map({label: i for i, label in enumerate(labels)}).to_numpy() for t in tables]
    command = " ".join([".venv/bin/python scripts/compare_runs.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, "n_common_test_items": len(common), "runs": {}, "first_minus_other": {}}
    for run, pred in zip(args.runs, predicted):
        metrics = evaluate_predictions(y, pred, labels)
        result["runs"][str(run)] = {"accuracy": metrics["accuracy"], "ci95": metrics["ci95"]["accuracy"]}
        print(f"{run}: accuracy {metrics['accuracy']:.3f} [{metrics['ci95']['accuracy'][0]:.3f}, "
              f"{metrics['ci95']['accuracy'][1]:.3f}] on {len(common)} common test items")
    for run, pred in zip(args.runs[1:], predicted[1:]):
        diff = paired_accuracy_difference(y, predicted[0], pred)
        test = mcnemar(y, predicted[0], pred)
        result["first_minus_other"][str(run)] = {"difference": diff, "mcnemar": test}
        print(f"{args.runs[0]} − {run}: {diff['difference']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
              f" (paired bootstrap 95%), McNemar p = {test['p_value']:.4f}")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
