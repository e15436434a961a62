"""The evaluation protocol: one run of the branches and fusion, k outer folds, cross-fitting's inner folds.

Functions of explicit arguments. Each fold's training reads a config of its own, derived from the caller's
with the fold written into it (``split.fold``; ``inner_fold: {fold, folds}`` for cross-fitting), so no
caller's config is ever changed; each fold's model card names the split column it trained on.

A training driver (it trains the branches and the fusion head), listed with the training modules in
``tests/test_layers.py``: nothing that predicts imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from engine.settings import with_values

Rows = dict[str, dict[str, Any]]


def comparison_names(cfg: DictConfig) -> tuple[str, str]:
    """The image-only and audio-only row names of the comparison table."""
    from covers.train import display_name

    return f"image-only ({display_name(cfg.covers)})", f"audio-only ({cfg.audio.name})"


def run_once(cfg: DictConfig, run_dir: Path) -> Rows:
    """The branches ``cfg.branches`` names, then fusion, into ``run_dir``; returns the rows to print."""
    from audio.train import train_audio
    from covers.train import display_name, train_covers

    rows: Rows = {}
    if "audio" in cfg.branches:
        rows[f"audio-only ({cfg.audio.name})"] = train_audio(cfg, run_dir / "audio")
    if "covers" in cfg.branches:
        rows[f"covers-only ({display_name(cfg.covers)})"] = train_covers(cfg, run_dir / "covers")
    if "fusion" in cfg.branches:
        from fusion.run import run_fusion

        crossfit_dirs = crossfit(cfg, run_dir / "crossfit", int(cfg.fusion.crossfit_folds)) \
            if cfg.fusion.fit_on == "crossfit" else None
        rows = run_fusion(cfg, run_dir / "fusion", run_dir / "covers", run_dir / "audio",
                          names=comparison_names(cfg), crossfit_dirs=crossfit_dirs)
    return rows


def crossfit(cfg: DictConfig, folder: Path, folds: int) -> list[tuple[Path, Path]]:
    """Both branches trained once per inner fold of the training items, each predicting its held-out fold,
    for the fusion head to be fitted on their out-of-fold predictions; returns ``(covers, audio)`` folders."""
    from audio.train import train_audio
    from covers.train import train_covers

    dirs = []
    for fold in range(folds):
        inner = folder / f"fold-{fold}"
        fold_cfg = with_values(cfg, {"inner_fold": {"fold": fold, "folds": folds}})
        train_audio(fold_cfg, inner / "audio")
        train_covers(fold_cfg, inner / "covers")
        dirs.append((inner / "covers", inner / "audio"))
    return dirs


def run_folds(cfg: DictConfig, run_dir: Path, folds: int) -> Rows:
    """Every outer fold of ``split=kfold`` in ``fold-<k>/``; returns each fold's rows, or with fusion the
    pooled out-of-fold rows (``pooled/``, ``folds.md``)."""
    from fusion.folds import pool_folds

    fold_rows = [run_once(with_values(cfg, {"split.fold": fold}), run_dir / f"fold-{fold}") for fold in range(folds)]
    if "fusion" not in cfg.branches:
        return {f"{name} · fold {k}": m for k, rows in enumerate(fold_rows) for name, m in rows.items()}
    pairing = next(iter(fold_rows[0].values()))["pairing"]
    return pool_folds(run_dir, [run_dir / f"fold-{k}" / "fusion" for k in range(folds)], fold_rows,
                      list(cfg.labels.classes), pairing, seed=int(cfg.seed))
