"""Evaluate a trained cover model on a covers table (``covers.csv`` schema) without retraining.

Usage: .venv/bin/python scripts/evaluate_covers.py RUN_DIR_OR_CHECKPOINT COVERS_CSV [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from covers.evaluate import evaluate_cover_model
from engine.cli import report_user_errors
from engine.inference import BEST_CHECKPOINT
from engine.report import format_classification_report


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="run folder holding checkpoint.pt, or the checkpoint")
    parser.add_argument("covers_csv", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <model>/eval_<csv name>)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    checkpoint = args.model / BEST_CHECKPOINT if args.model.is_dir() else args.model
    out = args.out or checkpoint.parent / f"eval_{args.covers_csv.stem}"
    metrics = evaluate_cover_model(checkpoint, args.covers_csv, out, device=args.device)
    print(format_classification_report(metrics) + f"\nReport folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
