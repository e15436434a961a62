"""The main job (`make run`): audio and cover branches, then late fusion; prints the comparison table.

With a paired catalogue (``data=paired data.catalogue=…``) both branches train on its tracks
(URLs fetched first, once) and fusion pairs them by track id. With fusion, the printed rows are
the comparison on the same test items; each branch's report on its own whole test set is in its
folder (``audio/``, ``covers/``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from engine.cli import report_user_errors
from engine.config import register_configs

register_configs()
log = logging.getLogger("genrefusion")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float:
    from audio.train import train_audio
    from covers.train import display_name, train_covers
    from engine.summary import print_results

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.branches:
        raise ValueError("branches is empty: give any of audio, covers, fusion (default: [audio,covers,fusion])")
    unknown = sorted(set(cfg.branches) - {"audio", "covers", "fusion"})
    if unknown:
        raise ValueError(f"branches: unknown {unknown}; known: audio, covers, fusion")
    if "fusion" in cfg.branches and not {"audio", "covers"} <= set(cfg.branches):
        raise ValueError("branches: fusion needs both audio and covers")
    if cfg.get("data") and cfg.data.get("catalogue"):
        from acquire.catalogue import fetch_catalogue, has_urls

        if has_urls(cfg.data.catalogue):
            cfg.data.loader.path = str(fetch_catalogue(cfg.data.catalogue, cfg.paths.download_dir))
    rows = {}
    if "audio" in cfg.branches:
        rows[f"audio-only ({cfg.audio.name})"] = train_audio(cfg, run_dir / "audio")
    if "covers" in cfg.branches:
        rows[f"covers-only ({display_name(cfg.covers)})"] = train_covers(cfg, run_dir / "covers")
    if "fusion" in cfg.branches:
        from fusion.run import run_fusion

        names = (f"image-only ({display_name(cfg.covers)})", f"audio-only ({cfg.audio.name})")
        rows = run_fusion(cfg, run_dir / "fusion", run_dir / "covers", run_dir / "audio", names=names)
    print_results(rows, run_dir, figures=sorted(run_dir.glob("*/confusion*.png")))
    return list(rows.values())[-1]["accuracy"]  # the fused row when fusion ran (multirun objective)


if __name__ == "__main__":
    main()
