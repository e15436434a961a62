"""The paper's covers-only table (Random Forest, M1–M5 × 3/4/5 classes × protocols) beside its numbers,
with a source-confound check for every label set.

A training driver: it trains every row of the table through :func:`covers.train.train_covers`, so it
sits with the training modules (``tests/test_layers.py``); nothing that predicts imports it."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from covers.backbones import create_backbone
from covers.inputs import backbone_embeddings
from covers.train import train_covers
from data.config import compose_config, prepare_from_config
from engine.inference import RESUME_CHECKPOINT
from engine.run import fit_estimator_and_report

log = logging.getLogger(__name__)
#: Test accuracy the paper reports (ResNet50 M3-style fine-tuning; Random Forest on 3 classes).
PAPER = {"paper3": {"cnn": 0.74, "random_forest": 0.5057}, "paper4": {"cnn": 0.61}, "paper5": {"cnn": 0.55}}
#: Label sets whose genres all exist in the Discogs part; the others need Spotify's jazz (mixed sources).
DISCOGS_ONLY = {"paper3"}
#: What a finished row leaves behind: its report, and the predictions M4/M5 take class weights from.
FINISHED_OUTPUTS = ("metrics.json", "predictions.csv")


def _data_overrides(label_set: str) -> list[str]:
    if label_set in DISCOGS_ONLY:
        return []
    return ["covers.data.name=covers_all", "covers.data.loader.sources=null"]


def source_confound(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """How far the label set is explained by the covers' source (Discogs vs. Spotify).

    Reports the source mix per genre, the accuracy of guessing the genre from the source alone
    (majority genre of each source, fitted on train), and how well a logistic regression on the
    frozen embeddings tells the sources apart (test accuracy; 0.5-ish means indistinguishable).
    """
    prepared = prepare_from_config(cfg, cfg.covers, run_dir)
    items = prepared.items
    mix = pd.crosstab(items["label"], items["source"]).to_dict(orient="index")
    train, test = items[items["split"] == "train"], items[items["split"] == "test"]
    majority = train.groupby("source")["label"].agg(lambda s: s.value_counts().index[0])
    from_source = float((test["source"].map(majority) == test["label"]).mean())
    result: dict[str, Any] = {"source_mix": mix, "genre_from_source_accuracy": from_source}
    if items["source"].nunique() > 1:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        backbone, info = create_backbone(cfg.covers.model.backbone, pretrained=True,
                                         weights_path=cfg.covers.model.weights_path)
        kept, x = backbone_embeddings(items, backbone, info, cfg.paths.cache_dir, progress=False)
        sources = sorted(kept.items["source"].unique())
        kept_items = kept.items.assign(y=kept.items["source"].map({s: i for i, s in enumerate(sources)}))
        train, test = (kept_items["split"] == "train").to_numpy(), (kept_items["split"] == "test").to_numpy()
        metrics, _ = fit_estimator_and_report(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)), x[train], kept_items["y"][train],
            kept_items[test], x[test], sources, run_dir / "source_classifier",
            title="source classifier (confound check)", card={"check": "source confound"}, predictions=False,
        )
        result["source_classifier_accuracy"] = metrics["accuracy"]
        result["source_classifier_ci95"] = metrics["ci95"]["accuracy"]
    return result


def reproduce(out_dir: Path, label_sets: list[str], protocols: list[str], mode: str, backbone: str,
              extra_overrides: list[str] | None = None) -> pd.DataFrame:
    """Run every row of the table; each model writes its own run folder under ``out_dir``.

    Returns one row per (label set, protocol, model) with accuracy, its 95% interval, n and
    ``reused`` (finished by an earlier call with the same config, see :func:`finished_metrics`).
    """
    def cnn(m: str) -> list[str]:
        return [f"experiment=covers_{m.lower()}", f"covers.mode={mode}", f"covers.model.backbone={backbone}",
                "covers.model.pretrained=true"]

    def base(label_set: str, protocol: str) -> list[str]:
        return [f"labels={label_set}", f"split={protocol}", "branches=[covers]",
                *_data_overrides(label_set), *(extra_overrides or [])]

    # Absent pretrained weights fail here, before the first row, not after the Random Forests have run.
    model_cfg = compose_config(base(label_sets[0], protocols[0]) + cnn("M1")).covers.model
    create_backbone(model_cfg.backbone, pretrained=True, weights_path=model_cfg.weights_path)
    rows = []
    for label_set in label_sets:
        for protocol in protocols:
            cell = out_dir / f"{label_set}-{protocol}"
            confound = source_confound(compose_config(base(label_set, protocol)), cell / "confound")
            models = [("RF", ["covers.mode=random_forest"])] + [(m, cnn(m)) for m in ("M1", "M2", "M3", "M4", "M5")]
            for name, overrides in models:
                run_dir = cell / name
                if name == "M4" or name == "M5":
                    overrides = [*overrides, f"covers.class_weights_from={cell / 'M3' / 'predictions.csv'}"]
                if name == "M5" and mode == "frozen":
                    rows.append({"labels": label_set, "protocol": protocol, "model": name,
                                 "note": "needs covers.mode=finetune (augmentation changes pixels)"})
                    continue
                cfg = compose_config(base(label_set, protocol) + overrides)
                metrics = finished_metrics(run_dir, cfg)
                reused = metrics is not None
                if reused:
                    log.info("%s was finished by an earlier call with the same config: reused", run_dir)
                else:
                    _start_row(run_dir, cfg)
                    metrics = train_covers(cfg, run_dir)
                rows.append({"labels": label_set, "protocol": protocol, "model": name, "n": metrics["n"],
                             "accuracy": metrics["accuracy"], "ci95": metrics["ci95"]["accuracy"],
                             "paper": PAPER[label_set].get("random_forest" if name == "RF" else "cnn"),
                             "reused": reused})
            rows.append({"labels": label_set, "protocol": protocol, "model": "confound", **confound})
    return pd.DataFrame(rows)


def finished_metrics(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The metrics of a row that an earlier call finished with exactly this config, else ``None``.

    So an interrupted or failed table, run again, trains only the rows it had not finished.
    """
    metrics = run_dir / "metrics.json"
    if not (_same_config(run_dir, cfg) and all((run_dir / name).is_file() for name in FINISHED_OUTPUTS)):
        return None
    # M4/M5 took class weights from M3's predictions: a retrained (or removed) M3 makes them stale.
    weights_from = Path(cfg.covers.get("class_weights_from") or "")
    if weights_from.name and (not weights_from.is_file()
                              or weights_from.stat().st_mtime_ns > metrics.stat().st_mtime_ns):
        return None
    return json.loads(metrics.read_text())


def _start_row(run_dir: Path, cfg: DictConfig) -> None:
    """Clear what an unfinished or differently configured earlier call left, then save this row's config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = list(FINISHED_OUTPUTS)
    if not _same_config(run_dir, cfg):
        stale.append(RESUME_CHECKPOINT)  # same config: training continues from it; another config: it can't
    for name in stale:
        (run_dir / name).unlink(missing_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")


def _same_config(run_dir: Path, cfg: DictConfig) -> bool:
    """Whether ``run_dir/config.yaml`` holds exactly ``cfg`` (as :func:`OmegaConf.save` writes it)."""
    saved = run_dir / "config.yaml"
    return saved.is_file() and saved.read_text() == OmegaConf.to_yaml(cfg)


def format_table(results: pd.DataFrame, mode: str, backbone: str) -> str:
    """Markdown: one line per model run, the paper's number beside it, then the confound checks."""
    lines = [f"CNN rows: {backbone}, mode {mode}. Paper: ResNet50 fine-tuned on MusicOSet covers.", "",
             "| labels | protocol | model | n | accuracy [95% CI] | paper |", "|---|---|---|---|---|---|"]
    models = results[results["model"] != "confound"]
    for r in models.itertuples():
        if isinstance(getattr(r, "note", None), str):
            lines.append(f"| {r.labels} | {r.protocol} | {r.model} | – | {r.note} | |")
            continue
        paper = f"{r.paper:.2%}" if isinstance(r.paper, float) and not np.isnan(r.paper) else ""
        lines.append(f"| {r.labels} | {r.protocol} | {r.model} | {int(r.n)} | {r.accuracy:.3f} "
                     f"[{r.ci95[0]:.3f}, {r.ci95[1]:.3f}] | {paper} |")
    lines += ["", "Source-confound check (Discogs vs. Spotify covers):", ""]
    for r in results[results["model"] == "confound"].to_dict(orient="records"):
        line = (f"- {r['labels']} / {r['protocol']}: source mix {r['source_mix']}; genre guessed from source alone: "
                f"{r['genre_from_source_accuracy']:.3f}")
        if isinstance(r.get("source_classifier_accuracy"), float) and not np.isnan(r["source_classifier_accuracy"]):
            line += (f"; source told apart from embeddings with accuracy {r['source_classifier_accuracy']:.3f} "
                     f"[{r['source_classifier_ci95'][0]:.3f}, {r['source_classifier_ci95'][1]:.3f}]")
        lines.append(line)
    return "\n".join(lines)
