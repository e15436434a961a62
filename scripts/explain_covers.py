"""Grad-CAM grid and "most typical covers per genre" grid for a trained cover run.

Usage: .venv/bin/python scripts/explain_covers.py COVERS_RUN_DIR [--n 12] [--per-class 6]
Writes gradcam.png and typical_covers.png into the run folder (test covers only).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from covers.explain import grad_cam, most_typical, save_grid
from covers.images import load_cover
from covers.inputs import normalise
from covers.predict import load_cover_model
from engine.cli import report_user_errors
from engine.config import register_configs
from engine.inference import BEST_CHECKPOINT
from engine.predictions import read_predictions


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=12, help="covers in the Grad-CAM grid")
    parser.add_argument("--per-class", type=int, default=6)
    args = parser.parse_args(argv)
    register_configs()
    cover_model, record = load_cover_model(args.run_dir / BEST_CHECKPOINT)
    model, labels = cover_model.network, cover_model.labels
    loaded = instantiate(record["card"]["config"]["data"]["loader"])
    paths = loaded.items.set_index("item_id")["cover_path"]
    predictions, _ = read_predictions(args.run_dir)
    test = predictions[(predictions["split"] == "test") & predictions["item_id"].isin(paths.index)]
    size = model.info.input_size

    typical = most_typical(test, labels, args.per_class)
    images = [load_cover(paths[i], size) for i in typical["item_id"]]
    titles = [f"{r.typical_of} p={getattr(r, 'p_' + r.typical_of):.2f}\n(true {r.label})" for r in typical.itertuples()]
    print("wrote", save_grid(images, titles, args.run_dir / "typical_covers.png", columns=args.per_class))

    sample = test.sample(min(args.n, len(test)), random_state=0)
    images = [load_cover(paths[i], size) for i in sample["item_id"]]
    cams, proba = grad_cam(model, normalise(np.stack(images), model.info))
    titles = [f"pred {labels[p.argmax()]} {p.max():.2f}\n(true {t})" for p, t in zip(proba, sample["label"])]
    print("wrote", save_grid(images, titles, args.run_dir / "gradcam.png", overlays=cams))
    return 0


if __name__ == "__main__":
    sys.exit(main())
