"""The main job (`make run`): trains what is built on the default config and prints a results table."""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from engine.config import register_resolvers

register_resolvers()
log = logging.getLogger("genrefusion")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from audio.train import train_audio
    from covers.train import train_covers
    from engine.summary import print_results

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    unknown = sorted(set(cfg.branches) - {"audio", "covers"})
    if unknown:
        raise ValueError(f"branches: unknown {unknown}; known: audio, covers")
    rows = {}
    if "audio" in cfg.branches:
        rows[f"audio-only ({cfg.audio.name})"] = train_audio(cfg, run_dir / "audio")
    if "covers" in cfg.branches:
        rows[f"covers-only ({cfg.covers.name})"] = train_covers(cfg, run_dir / "covers")
    print_results(rows, run_dir)
    return next(iter(rows.values()))["accuracy"]


if __name__ == "__main__":
    main()
