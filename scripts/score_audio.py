"""Score a folder of audio files with a trained audio model.

Usage: .venv/bin/python scripts/score_audio.py RUN_DIR_OR_CHECKPOINT FOLDER [--out scores.csv] [--n-jobs 2]

Writes one CSV row per file (status, error, predicted genre, class probabilities); files that
cannot be read are listed with their reason, never dropped silently.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audio.predict import load_audio_model
from engine.cli import report_user_errors
from engine.inference import BEST_CHECKPOINT
from engine.io import atomic_path
from scoring.audio_files import find_audio_files, score_audio_files


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a run folder holding checkpoint.pt, or the checkpoint itself")
    parser.add_argument("folder", type=Path, help="folder searched recursively for audio files")
    parser.add_argument("--out", type=Path, default=Path("audio_scores.csv"))
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse spectrograms/features across calls")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    checkpoint = args.model / BEST_CHECKPOINT if args.model.is_dir() else args.model
    paths = find_audio_files(args.folder)
    if not paths:
        parser.error(f"no audio files under {args.folder}")
    model, _ = load_audio_model(checkpoint)
    scores = score_audio_files(paths, model, cache_dir=args.cache_dir, n_jobs=args.n_jobs, device=args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as temporary:
        scores.to_csv(temporary, index=False)
    failed = scores["status"] != "ok"
    print(f"scored {int((~failed).sum())} of {len(scores)} files → {args.out}"
          + (f"; {int(failed.sum())} failed (see the error column)" if failed.any() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
