"""Score a table of tracks with a trained model folder (covers, audio, or both fused).

Usage: .venv/bin/python scripts/score.py model_dir=RUN_FOLDER input=TRACKS.csv|.parquet [output=SCORES.csv|.parquet]
       [shard=i/n] [catalogue=ITEMS.csv] [batch_size=auto|64] [engine=ray ray.address=auto ray.actors=4]
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
    from acquire.http import download_policy
    from scoring.tables import parse_shard

    if cfg.engine not in ("local", "ray"):
        raise ValueError(f"engine must be local or ray, got {cfg.engine!r}")
    index, count = parse_shard(cfg.shard)
    suffix = ".parquet" if cfg.engine == "ray" else ".csv"
    default_name = f"scores{suffix}" if count == 1 else f"scores.shard-{index}-of-{count}{suffix}"
    output = Path(cfg.output) if cfg.output else Path(HydraConfig.get().runtime.output_dir) / default_name
    common = {"shard": str(cfg.shard), "batch_size": cfg.batch_size, "catalogue": cfg.catalogue,
              "cache_dir": cfg.paths.cache_dir, "download_dir": cfg.download_dir, "device": cfg.device,
              "progress": cfg.progress, "also_csv": cfg.also_csv, "download": download_policy(cfg.download),
              "cover_precision": cfg.cover_precision}
    if cfg.engine == "ray":
        from scoring.ray_engine import score_table_ray

        summary = score_table_ray(cfg.input, cfg.model_dir, output, **common, address=cfg.ray.address,
                                  num_cpus=cfg.ray.num_cpus, actors=int(cfg.ray.actors),
                                  gpus_per_actor=cfg.ray.gpus_per_actor, actor_cpus=float(cfg.ray.actor_cpus),
                                  features_on_actors=cfg.ray.features_on_actors)
    else:
        from scoring.jobs import score_table

        summary = score_table(cfg.input, cfg.model_dir, output, **common, n_jobs=int(cfg.n_jobs))
    print(json.dumps(summary, indent=2))
    print(f"Scores: {output}")


if __name__ == "__main__":
    main()
