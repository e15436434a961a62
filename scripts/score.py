"""Score a table of tracks with a trained model folder (covers, audio, or both fused).

Usage: .venv/bin/python scripts/score.py model_dir=RUN_FOLDER input=TRACKS.csv [output=SCORES.csv]
       [shard=i/n] [catalogue=ITEMS.csv] [batch_size=64]
One output row per input row; an interrupted run given the same output resumes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from engine.cli import report_user_errors

log = logging.getLogger("genrefusion")


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from scoring.tracks import parse_shard, score_table

    index, count = parse_shard(cfg.shard)
    default_name = "scores.csv" if count == 1 else f"scores.shard-{index}-of-{count}.csv"
    output = Path(cfg.output) if cfg.output else Path(HydraConfig.get().runtime.output_dir) / default_name
    summary = score_table(cfg.input, cfg.model_dir, output, shard=str(cfg.shard), batch_size=int(cfg.batch_size),
                          catalogue=cfg.catalogue, cache_dir=cfg.paths.cache_dir, download_dir=cfg.download_dir,
                          device=cfg.device, n_jobs=int(cfg.n_jobs), progress=cfg.progress)
    print(json.dumps(summary, indent=2))
    print(f"Scores: {output}")


if __name__ == "__main__":
    main()
