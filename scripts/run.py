"""The main job (`make run`): audio and cover branches, then late fusion; prints the comparison table.

With a paired catalogue (``data=paired data.catalogue=…``) both branches train on its tracks
(URLs fetched first, once) and fusion pairs them by track id. With fusion, the printed rows are
the comparison on the same test items; each branch's report on its own whole test set is in its
folder (``audio/``, ``covers/``).

``torchrun --nproc_per_node=N scripts/run.py …`` trains every torch model data-parallel (see
``engine/distributed.py``); rank 0 writes the run folder and prints the table.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from engine import distributed
from engine.cli import report_user_errors
from data.config import check_crossfit_possible, register_configs, split_spec, tables_loaded_once
from engine.selection import CANDIDATES_DIR, write_selection_summary
from engine.tracking import check_tracking, track_run
from engine.settings import with_values
from fusion.protocol import run_folds, run_once

register_configs()
log = logging.getLogger("genrefusion")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float:
    from engine.summary import print_results

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.branches:
        raise ValueError("branches is empty: give any of audio, covers, fusion (default: [audio,covers,fusion])")
    unknown = sorted(set(cfg.branches) - {"audio", "covers", "fusion"})
    if unknown:
        raise ValueError(f"branches: unknown {unknown}; known: audio, covers, fusion")
    if "fusion" in cfg.branches and not {"audio", "covers"} <= set(cfg.branches):
        raise ValueError("branches: fusion needs both audio and covers")
    check_tracking(cfg.tracking)
    split_spec(cfg.split)  # now: a k-fold run counts its folds from it before any branch reads it
    # The later parts' settings are checked now, not after the branches before them have trained.
    if "covers" in cfg.branches:
        from covers.train import check_covers_config

        check_covers_config(cfg)
    if "fusion" in cfg.branches:
        from fusion.run import fusion_config

        if fusion_config(cfg.fusion).fit_on == "crossfit":
            check_crossfit_possible(cfg)
    if distributed.init_from_environment() and not distributed.is_main_process():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        with tables_loaded_once():  # one load of each item table for all of the run's trainings
            if cfg.get("data") and cfg.data.get("catalogue"):
                from acquire.catalogue import fetch_catalogue, has_urls

                if has_urls(cfg.data.catalogue):  # fetched once, by rank 0; the others wait for its table
                    fetched = fetch_catalogue(cfg.data.catalogue, cfg.paths.download_dir) \
                        if distributed.is_main_process() else None
                    cfg = with_values(cfg, {"data.loader.path": str(distributed.broadcast_object(fetched))})
            if cfg.split.protocol == "kfold" and cfg.split.fold is None:
                rows = run_folds(cfg, run_dir, int(cfg.split.folds))
            else:
                rows = run_once(cfg, run_dir)
    finally:
        distributed.shut_down()
    if distributed.launched_rank() == 0:
        figures = [path for path in sorted(run_dir.glob("**/confusion*.png")) if CANDIDATES_DIR not in path.parts]
        selections = write_selection_summary(run_dir)
        track_run(cfg, run_dir, rows)  # before the table, so that "Run folder: …" stays the last line
        print_results(rows, run_dir, figures=figures[:6], selections=selections)
    return list(rows.values())[-1]["accuracy"]  # the fused row when fusion ran (multirun objective)


if __name__ == "__main__":
    sys.argv += distributed.scratch_run_dir_overrides()
    main()
