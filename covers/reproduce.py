"""The paper's covers-only table (Random Forest, M1–M5 × 3/4/5 classes × protocols) beside its numbers,
with a source-confound check for every label set.

A training driver: it trains every row of the table through :func:`covers.train.train_covers`, so it
sits with the training modules (``tests/test_layers.py``); nothing that predicts imports it."""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from covers.backbones import create_backbone
from covers.inputs import backbone_embeddings
from covers.train import train_covers
from data.config import compose_config, prepare_from_config, tables_loaded_once
from engine.inference import RESUME_CHECKPOINT
from engine.io import write_json
from engine.predictions import predictions_content, predictions_file
from engine.run import fit_estimator_and_report, machine_info

log = logging.getLogger(__name__)
#: Test accuracy the paper reports (ResNet50 M3-style fine-tuning; Random Forest on 3 classes).
PAPER = {"paper3": {"cnn": 0.74, "random_forest": 0.5057}, "paper4": {"cnn": 0.61}, "paper5": {"cnn": 0.55}}
#: Label sets whose genres all exist in the Discogs part; the others need Spotify's jazz (mixed sources).
DISCOGS_ONLY = {"paper3"}
#: What a finished row leaves behind (cleared when it is trained again): its report, and the predictions
#: M4/M5 take class weights from, compressed where the row was committed so.
FINISHED_OUTPUTS = ("metrics.json", "predictions.csv", "predictions.csv.gz")
#: Written beside a row's report when it finishes: the command, machine and seconds that made it.
ROW_RECORD = "row.json"
#: Written when a row starts: digests of what it reads besides its config and data (M4/M5: M3's predictions).
ROW_INPUTS = "inputs.json"
#: The note of a row a call has not finished (yet: the table is written after every row).
NOT_FINISHED = "not finished by this call"
#: This checkout's root. A row records the root of the checkout that made it, so rows made in another copy
#: of the repository (a lent machine's) are reused here and there: their configs differ only by that prefix.
CHECKOUT = Path(__file__).resolve().parents[1]


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


def cell_overrides(label_set: str, protocol: str, extra_overrides: Sequence[str] = ()) -> list[str]:
    """The overrides of one cell of the table (a label set under a protocol), before the model's."""
    return [f"labels={label_set}", f"split={protocol}", "branches=[covers]", *_data_overrides(label_set),
            *extra_overrides]


@dataclass(frozen=True)
class TableRow:
    """One row of the table to train: ``model`` is RF, M1–M5 or ``confound`` (the cell's source check)."""

    label_set: str
    protocol: str
    model: str
    overrides: tuple[str, ...]
    run_dir: Path

    @property
    def key(self) -> tuple[str, str, str]:
        return self.label_set, self.protocol, self.model

    @property
    def after(self) -> tuple[str, str, str] | None:
        """The row whose predictions this one takes its class weights from (M4, M5: the cell's M3)."""
        return (self.label_set, self.protocol, "M3") if self.model in ("M4", "M5") else None


def table_rows(out_dir: Path, label_sets: Sequence[str], protocols: Sequence[str], mode: str, backbone: str,
               extra_overrides: Sequence[str] = ()) -> list[TableRow]:
    """Every row of the table in its order, each with its run folder ``out_dir/<labels>-<protocol>/<model>``."""
    rows = []
    for label_set in label_sets:
        for protocol in protocols:
            cell = out_dir / f"{label_set}-{protocol}"
            base = cell_overrides(label_set, protocol, extra_overrides)
            rows.append(TableRow(label_set, protocol, "RF", (*base, "covers.mode=random_forest"), cell / "RF"))
            for model in ("M1", "M2", "M3", "M4", "M5"):
                overrides = [*base, f"experiment=covers_{model.lower()}", f"covers.mode={mode}",
                             f"covers.model.backbone={backbone}", "covers.model.pretrained=true"]
                if model in ("M4", "M5"):
                    overrides.append(f"covers.class_weights_from={cell / 'M3' / 'predictions.csv'}")
                rows.append(TableRow(label_set, protocol, model, tuple(overrides), cell / model))
            rows.append(TableRow(label_set, protocol, "confound", tuple(base), cell / "confound"))
    return rows


def reproduce(out_dir: Path, label_sets: list[str], protocols: list[str], mode: str, backbone: str,
              extra_overrides: Sequence[str] = (), parallel: int = 1, command: str = "",
              on_row: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Run every row of the table; each model writes its own run folder under ``out_dir``.

    ``parallel`` rows train at once, each in a process of its own (one GPU holds several fine-tunes);
    the M3 rows start first, and M4 and M5 once their cell's M3 has finished. A row that fails is
    recorded with its error and the rows that need it are skipped; the others go on. ``command`` is
    recorded with each row trained.
    Returns one row per (label set, protocol, model) with accuracy, its 95% interval, n, ``reused``
    (finished by an earlier call with the same config, see :func:`finished_metrics`) and where it was
    made (``machine``, ``commit``, ``command``), or ``note`` for a row not made. ``on_row`` is handed that
    frame after every row that ends, the rows still to come noted as such (so a call stopped midway leaves
    a table of what it finished).
    """
    rows = table_rows(out_dir, label_sets, protocols, mode, backbone, extra_overrides)
    # Absent pretrained weights fail here, before the first row, not after the Random Forests have run.
    first_cnn = next(row for row in rows if row.model == "M1")
    model_cfg = compose_config(list(first_cnn.overrides)).covers.model
    create_backbone(model_cfg.backbone, pretrained=True, weights_path=model_cfg.weights_path)

    def table(done: dict[tuple[str, str, str], dict]) -> pd.DataFrame:
        return pd.DataFrame([done.get(row.key) or {**_row_head(row), "note": NOT_FINISHED} for row in rows])

    done = _run_rows(rows, mode, command, parallel, (lambda done: on_row(table(done))) if on_row else None)
    return table(done)


def _run_rows(rows: list[TableRow], mode: str, command: str, parallel: int,
              on_row: Callable[[dict], None] | None = None) -> dict[tuple[str, str, str], dict]:
    """Each row's result, rows run in dependency order, ``parallel`` at a time; ``on_row`` is handed the
    results so far after every row that ends."""
    done: dict[tuple[str, str, str], dict] = {}
    waiting = list(rows)
    awaited = {row.after for row in rows if row.after}

    def ready() -> list[TableRow]:
        """Rows whose dependency has finished; those whose dependency failed are recorded as skipped."""
        startable = []
        for row in list(waiting):
            needed = done.get(row.after) if row.after else {}
            if needed is None:
                continue
            waiting.remove(row)
            if needed.get("failed") or needed.get("skipped"):
                done[row.key] = {**_row_head(row), "note": f"not run: {row.after[2]} did not finish", "skipped": True}
            else:
                startable.append(row)
        # The rows others wait for (M3) first: M4 and M5 then start while the table's other rows train,
        # instead of after all of them.
        return sorted(startable, key=lambda row: row.key not in awaited)

    # Rows an earlier call finished are taken here, before any row starts: they need no process, and the
    # table written after each row lists them from the first. A row whose dependency is to be trained
    # again waits for it (its class weights may change).
    for row in rows:
        if row.after is None or done.get(row.after, {}).get("reused"):
            if (result := reused_row(row, mode)) is not None:
                done[row.key] = result
                waiting.remove(row)
    if done and on_row:
        on_row(done)
    if parallel <= 1:
        with tables_loaded_once():  # the rows of one call share each covers table, read once
            while waiting:
                for row in ready():
                    done[row.key] = run_row(row, mode, command)
                    if on_row:
                        on_row(done)
        return done
    with ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_setup, initargs=(parallel,)) as pool:
        running = {pool.submit(run_row, row, mode, command): row for row in ready()}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                row = running.pop(future)
                try:
                    done[row.key] = future.result()
                except Exception as error:  # noqa: BLE001 — a worker that died: recorded, the table goes on
                    done[row.key] = _failed(row, error)
            if on_row:
                on_row(done)
            running.update({pool.submit(run_row, row, mode, command): row for row in ready()})
    return done


def _worker_setup(parallel: int) -> None:
    """A row's process: log lines as the parent's, and its share of the CPU threads (not all of them each)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))


def _row_head(row: TableRow) -> dict[str, Any]:
    return {"labels": row.label_set, "protocol": row.protocol, "model": row.model}


def _failed(row: TableRow, error: BaseException) -> dict[str, Any]:
    log.error("%s/%s %s failed: %s", row.label_set, row.protocol, row.model, error)
    return {**_row_head(row), "note": f"failed: {type(error).__name__}: {error}", "failed": True}


def run_row(row: TableRow, mode: str, command: str) -> dict[str, Any]:
    """Train one row (or reuse it, finished with the same config), writing ``row.json`` (where and how it
    was made) beside its report; an error is returned as the row's ``note``, not raised."""
    if row.model == "confound":
        try:
            return {**_row_head(row), **source_confound(compose_config(list(row.overrides)), row.run_dir)}
        except Exception as error:  # noqa: BLE001 — recorded in the table; the other rows go on
            return _failed(row, error)
    if row.model == "M5" and mode == "frozen":
        return {**_row_head(row), "note": "needs covers.mode=finetune (augmentation changes pixels)"}
    if (finished := reused_row(row, mode)) is not None:
        return finished
    try:
        cfg = compose_config(list(row.overrides))
        _start_row(row.run_dir, cfg)
        started = time.perf_counter()
        metrics = train_covers(cfg, row.run_dir)
        write_json(row.run_dir / ROW_RECORD, {"command": command, "machine": machine_info(), "checkout": str(CHECKOUT),
                                              "seconds": round(time.perf_counter() - started, 1),
                                              "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    except Exception as error:  # noqa: BLE001 — recorded in the table; the other rows go on
        return _failed(row, error)
    return _row_result(row, metrics, reused=False)


def reused_row(row: TableRow, mode: str) -> dict[str, Any] | None:
    """The row's result when an earlier call finished it with the same config (nothing to train), else
    ``None`` (also for a row whose config does not compose: running it reports that)."""
    if row.model == "confound" or (row.model == "M5" and mode == "frozen"):
        return None
    try:
        metrics = finished_metrics(row.run_dir, compose_config(list(row.overrides)))
    except Exception:  # noqa: BLE001 — run_row records the error when the row runs
        return None
    if metrics is None:
        return None
    log.info("%s was finished by an earlier call with the same config: reused", row.run_dir)
    return _row_result(row, metrics, reused=True)


def _row_result(row: TableRow, metrics: dict[str, Any], reused: bool) -> dict[str, Any]:
    return {**_row_head(row), "n": metrics["n"], "accuracy": metrics["accuracy"], "ci95": metrics["ci95"]["accuracy"],
            "paper": PAPER[row.label_set].get("random_forest" if row.model == "RF" else "cnn"), "reused": reused,
            **_made(row.run_dir)}


def _made(run_dir: Path) -> dict[str, Any]:
    """Where a finished row was made, from its ``row.json`` (absent for rows of older code)."""
    record = _read_json(run_dir / ROW_RECORD)
    if not record:
        return {"machine": None, "commit": None, "command": None, "seconds": None}
    machine = record["machine"]
    where = f"{machine['gpu'] or machine['cpu']}, {machine['cpu_cores']} cores"
    return {"machine": where, "commit": machine.get("git_commit"), "command": record["command"],
            "seconds": record["seconds"]}


def finished_metrics(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The metrics of a row that an earlier call finished with exactly this config, else ``None``.

    So an interrupted or failed table, run again, trains only the rows it had not finished.
    """
    metrics = run_dir / "metrics.json"
    if not (_same_config(run_dir, cfg) and metrics.is_file() and predictions_file(run_dir).is_file()):
        return None
    # M4/M5 took class weights from M3's predictions: a retrained (or removed) M3 with other predictions
    # makes them stale. Compared by content (copies and checkouts do not keep modification times); rows
    # made before their inputs were recorded, by modification time.
    if cfg.covers.get("class_weights_from"):
        weights_from = predictions_file(cfg.covers.class_weights_from)
        if not weights_from.is_file():
            return None
        recorded = _read_json(run_dir / ROW_INPUTS)
        if (recorded != _row_inputs(cfg) if recorded
                else weights_from.stat().st_mtime_ns > metrics.stat().st_mtime_ns):
            return None
    return json.loads(metrics.read_text())


def _row_inputs(cfg: DictConfig) -> dict[str, str]:
    """Digests of what the row reads besides its config and data: M4/M5's class-weight predictions (their
    content, compressed or not)."""
    weights_from = cfg.covers.get("class_weights_from")
    if not (weights_from and predictions_file(weights_from).is_file()):
        return {}
    return {"class_weights_sha256": hashlib.sha256(predictions_content(weights_from)).hexdigest()}


def _read_json(path: Path) -> dict[str, Any]:
    """A row's record (empty where there is none: unfinished, or made by older code)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _start_row(run_dir: Path, cfg: DictConfig) -> None:
    """Clear what an unfinished or differently configured earlier call left, then save this row's config
    and inputs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = list(FINISHED_OUTPUTS)
    inputs = _row_inputs(cfg)
    # Same config and inputs: training continues from the checkpoint; otherwise it can't.
    if not _same_config(run_dir, cfg) or _read_json(run_dir / ROW_INPUTS) != inputs:
        stale.append(RESUME_CHECKPOINT)
    for name in stale:
        (run_dir / name).unlink(missing_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    write_json(run_dir / ROW_INPUTS, inputs)


def _same_config(run_dir: Path, cfg: DictConfig) -> bool:
    """Whether ``run_dir/config.yaml`` holds exactly ``cfg`` (as :func:`OmegaConf.save` writes it), paths in
    the checkout that made the row read as paths in this one."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    text = saved.read_text()
    made_in = _read_json(run_dir / ROW_RECORD).get("checkout")
    if made_in and made_in != str(CHECKOUT):
        text = re.sub(re.escape(made_in) + r"""(?=/|$|['"])""", str(CHECKOUT).replace("\\", "\\\\"), text,
                      flags=re.MULTILINE)
    return text == OmegaConf.to_yaml(cfg)


def format_table(results: pd.DataFrame, mode: str, backbone: str) -> str:
    """Markdown: one line per model run with where it was made and the paper's number beside it, the
    commands that made the rows, then the confound checks."""
    lines = [f"CNN rows: {backbone}, mode {mode}. Paper: ResNet50 fine-tuned on MusicOSet covers.", "",
             "| labels | protocol | model | n | accuracy [95% CI] | paper | made on (commit) |",
             "|---|---|---|---|---|---|---|"]
    models = results[results["model"] != "confound"]
    commands: list[str] = []
    for r in models.to_dict(orient="records"):
        if _present(r.get("note")):
            lines.append(f"| {r['labels']} | {r['protocol']} | {r['model']} | – | {r['note']} | | |")
            continue
        paper = f"{r['paper']:.2%}" if _present(r.get("paper")) else ""
        made = f"{r['machine']} ({r['commit']})" if _present(r.get("machine")) else "not recorded"
        if _present(r.get("command")) and r["command"] not in commands:
            commands.append(r["command"])
        if _present(r.get("command")):
            made += f" [{commands.index(r['command']) + 1}]"
        lines.append(f"| {r['labels']} | {r['protocol']} | {r['model']} | {int(r['n'])} | {r['accuracy']:.3f} "
                     f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {paper} | {made} |")
    if commands:
        lines += ["", "Commands that made the rows:", ""] + [f"{i}. `{c}`" for i, c in enumerate(commands, 1)]
    lines += ["", "Source-confound check (Discogs vs. Spotify covers):", ""]
    for r in results[results["model"] == "confound"].to_dict(orient="records"):
        if _present(r.get("note")):
            lines.append(f"- {r['labels']} / {r['protocol']}: {r['note']}")
            continue
        line = (f"- {r['labels']} / {r['protocol']}: source mix {r['source_mix']}; genre guessed from source alone: "
                f"{r['genre_from_source_accuracy']:.3f}")
        if _present(r.get("source_classifier_accuracy")):
            line += (f"; source told apart from embeddings with accuracy {r['source_classifier_accuracy']:.3f} "
                     f"[{r['source_classifier_ci95'][0]:.3f}, {r['source_classifier_ci95'][1]:.3f}]")
        lines.append(line)
    return "\n".join(lines)


def _present(value: Any) -> bool:
    """Whether a cell of the results frame holds a value (not ``None``/NaN, which pandas fills in for absent keys)."""
    return value is not None and not (isinstance(value, float) and np.isnan(value))
