"""Summarise a Hydra multirun sweep: every run's results in one table, mean ± std over seeds.

Usage: .venv/bin/python scripts/summarize_sweep.py SWEEP_DIR [--over seed]
Writes SWEEP_DIR/summary.csv, summary.md and runs.csv, and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli import report_user_errors
from engine.sweep import collect_runs, summarise, to_markdown


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--over", default="seed", help="override averaged over (default: seed)")
    args = parser.parse_args(argv)
    runs = collect_runs(args.sweep_dir)
    runs.to_csv(args.sweep_dir / "runs.csv", index=False)
    failed = runs[runs["status"] != "ok"]
    failures = f"{len(failed)} run(s) failed:" + "".join(f"\n  {run.run}: {run.status}" for run in failed.itertuples())
    if len(failed) == len(runs):
        raise ValueError(f"no run of {args.sweep_dir} finished; {failures}")
    summary = summarise(runs, over=args.over)
    summary.to_csv(args.sweep_dir / "summary.csv", index=False)
    table = to_markdown(summary)
    (args.sweep_dir / "summary.md").write_text(table + "\n")
    print(table + (f"\n\n{failures}" if len(failed) else "") + f"\n\nWritten to {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
