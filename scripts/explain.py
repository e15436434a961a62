"""Look inside a trained branch: embeddings (Parquet), a 2-D map, top losses, and for covers class-activation maps.

Usage: .venv/bin/python scripts/explain.py RUN_DIR/covers|RUN_DIR/audio [--out DIR] [--method gradcam|gradcam++|
       scorecam|eigencam] [--cache-dir artifacts/cache]
Writes into DIR (default: RUN_DIR/<branch>/explain): embeddings.parquet, map.png (+ map_covers.png),
top_losses.png/.csv, cam_<method>.png and typical_covers.png (covers).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli import report_user_errors
from data.config import register_configs
from engine.inference import BEST_CHECKPOINT, read_checkpoint


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    from covers.explain import CAM_METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a branch's run folder (covers/ or audio/ of a run)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--method", default="gradcam", choices=CAM_METHODS)
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/cache"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    register_configs()
    record = read_checkpoint(args.run_dir / BEST_CHECKPOINT)
    out = args.out or args.run_dir / "explain"
    if "covers_model" in record:
        from covers.explain import explain_cover_run

        written = explain_cover_run(args.run_dir, out, args.cache_dir, method=args.method, progress=not args.no_progress)
    elif "inputs" in record:
        from audio.explain import explain_audio_run

        written = explain_audio_run(args.run_dir, out, args.cache_dir, progress=not args.no_progress)
    else:
        raise ValueError(f"{args.run_dir / BEST_CHECKPOINT} is neither a covers nor an audio checkpoint")
    print("\n".join(f"{name}: {path}" for name, path in written.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
