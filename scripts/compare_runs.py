"""Paired comparison of two or more runs on their common test items (same split).

Usage: genrefusion compare RUN_A RUN_B [RUN_C ...] [--out FILE.json]
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
from engine.predictions import compare_runs


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("need at least two runs")
    try:
        compared = compare_runs(args.runs)
    except ValueError as error:
        parser.error(str(error))
    command = " ".join([".venv/bin/python scripts/compare_runs.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, **compared}
    n = compared["n_common_test_items"]
    for run, scores in compared["runs"].items():
        print(f"{run}: accuracy {scores['accuracy']:.3f} [{scores['ci95'][0]:.3f}, {scores['ci95'][1]:.3f}] "
              f"on {n} common test items")
    for run, versus in compared["first_minus_other"].items():
        diff, test = versus["difference"], versus["mcnemar"]
        print(f"{args.runs[0]} − {run}: {diff['difference']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
              f" (paired bootstrap 95%), McNemar p = {test['p_value']:.4f}")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
