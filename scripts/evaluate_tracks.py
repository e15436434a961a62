"""Evaluate a trained model folder on a labelled catalogue it never saw (default: the 47 shared real tracks).

Usage: .venv/bin/python scripts/evaluate_tracks.py model_dir=RUN_FOLDER [data=paired_shared | data=paired
       data.catalogue=TRACKS.csv]
Prints image-only vs. audio-only vs. fused on the same tracks beside the majority class (pairing: real)
and writes them, with each track's probabilities, into the run folder.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from engine.cli import report_user_errors
from engine.settings import with_values
from data.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from acquire.catalogue import fetch_catalogue, has_urls
    from engine.summary import print_results
    from scoring.evaluate import evaluate_tracks

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.data.get("catalogue") and has_urls(cfg.data.catalogue):
        cfg = with_values(cfg, {"data.loader.path": str(fetch_catalogue(cfg.data.catalogue, cfg.paths.download_dir))})
    rows = evaluate_tracks(cfg.model_dir, instantiate(cfg.data.loader), run_dir, cache_dir=cfg.paths.cache_dir,
                           device=cfg.device, n_jobs=int(cfg.n_jobs), seed=int(cfg.seed),
                           context={"data": cfg.data.name})
    print_results(rows, run_dir, figures=sorted(run_dir.glob("confusion*.png")))


if __name__ == "__main__":
    main()
