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
    from engine.summary import print_results

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    rows = {f"audio-only ({cfg.audio.name})": train_audio(cfg, run_dir / "audio")}
    print_results(rows, run_dir)
    return rows[f"audio-only ({cfg.audio.name})"]["accuracy"]


if __name__ == "__main__":
    main()
