"""Batch scoring of tracks with a trained model folder: covers, audio, or both fused.

Input: a CSV of tracks with any of ``track_id``/``item_id``, ``cover_path``, ``cover_url``,
``audio_path``, ``audio_url`` (relative paths are relative to the CSV's folder); an optional
catalogue item table resolves ids that come without files. Output: exactly one row per input
row, in input order, with ``status`` (``ok``, or why the row could not be scored), the
modalities used, the predicted genre and every class probability. A modality that fails while
the other works leaves the row ``ok`` with the failure in ``cover_error``/``audio_error``.

Each modality is scored by its branch's predict path (:mod:`covers.predict`, :mod:`audio.predict`)
and the two are combined by the run's fitted fusion head, exactly as in training. Rows are scored
in batches and appended to the output as each batch finishes, so an interrupted run resumes after
the last written row; ``shard=(i, n)`` scores rows ``r`` with ``r % n == i`` so that several
machines can split one catalogue.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from acquire.http import Downloader
from acquire.verify import verify_audio, verify_cover
from audio.predict import AudioModel, load_audio_model, predict_audio
from covers.predict import CoverModel, load_cover_model, predict_covers
from data.items import check_header
from engine.inference import BEST_CHECKPOINT, read_checkpoint
from engine.io import write_json, write_text_atomic
from engine.predictions import present, probability_columns, with_predictions
from fusion.heads import FUSION_HEAD, FusionHead, fusion_inputs, load_fusion_head

log = logging.getLogger(__name__)
ID_COLUMNS = ("track_id", "item_id")
SOURCE_COLUMNS = ("cover_path", "cover_url", "audio_path", "audio_url")


@dataclass
class TrackScorer:
    """What a model folder holds: a cover model, an audio model, and the fusion head when both."""

    labels: list[str]
    cover_model: CoverModel | None
    audio_model: AudioModel | None
    fusion_head: FusionHead | None
    model_dir: Path
    #: The fusion head's registry name (``weighted``, ``logreg``, …) when there is one.
    fusion_method: str | None = None

    @property
    def modalities(self) -> list[str]:
        return [name for name, part in (("cover", self.cover_model), ("audio", self.audio_model)) if part is not None]


def load_track_scorer(model_dir: str | Path) -> TrackScorer:
    """A main-job run folder (``covers/``, ``audio/``, ``fusion/``) or one branch's folder → :class:`TrackScorer`."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    cover_model: CoverModel | None = None
    audio_model: AudioModel | None = None
    labels: dict[str, list[str]] = {}
    for folder in (model_dir / "covers", model_dir / "audio", model_dir):
        checkpoint = folder / BEST_CHECKPOINT
        if not checkpoint.is_file():
            continue
        record = read_checkpoint(checkpoint)
        if "covers_model" in record and cover_model is None:
            cover_model, _ = load_cover_model(checkpoint)
            labels["cover"] = cover_model.labels
        elif "inputs" in record and audio_model is None:
            audio_model, _ = load_audio_model(checkpoint)
            labels["audio"] = audio_model.labels
    if cover_model is None and audio_model is None:
        raise FileNotFoundError(f"{model_dir} holds no cover or audio checkpoint ({BEST_CHECKPOINT}) in "
                                "itself, covers/ or audio/: give a main-job run folder or a branch's folder")
    if len({tuple(v) for v in labels.values()}) > 1:
        raise ValueError(f"the branches in {model_dir} were trained on different label sets: {labels}")
    fusion_head, fusion_method = None, None
    if cover_model is not None and audio_model is not None:
        head_path = model_dir / "fusion" / FUSION_HEAD
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path} is missing: rerun the main job with this version to save the fitted "
                                    "fusion head, or score one modality by giving the covers/ or audio/ folder")
        fusion_head = load_fusion_head(head_path)
        fusion_method = json.loads(head_path.read_text())["method"]
    return TrackScorer(next(iter(labels.values())), cover_model, audio_model, fusion_head, model_dir, fusion_method)


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 ≤ i < n``."""
    try:
        index, count = (int(part) for part in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return index, count


def read_track_table(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Every record of the CSV as one row (``row`` = 0-based record number), malformed ones included.

    A record whose field count differs from the header's, or that is empty, keeps its place
    with ``row_error`` set, so it still gets its output row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"track table not found: {path}")
    # utf-8-sig: spreadsheet programs start a CSV with a byte-order mark, which would otherwise stick to
    # the first column's name and hide it (every track id lost).
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise ValueError(f"{path} is empty: expected a header row")
            check_header(header, path)
            known = set(ID_COLUMNS) | set(SOURCE_COLUMNS)
            if not known & set(header):
                raise ValueError(f"{path} has none of the columns {sorted(known)}; header is {header}")
            records = []
            for record in reader:
                row = dict.fromkeys(header, "")
                if not record or all(not cell.strip() for cell in record):
                    row["row_error"] = "empty row"
                elif len(record) != len(header):
                    row["row_error"] = f"malformed row: {len(record)} fields, expected {len(header)}"
                else:
                    row.update({k: v.strip() for k, v in zip(header, record)})
                    row["row_error"] = ""
                records.append(row)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): "
                         "save it as UTF-8 CSV and score it again") from None
    table = pd.DataFrame(records, columns=header + ["row_error"]).fillna("")
    table.insert(0, "row", np.arange(len(table)))
    for column in SOURCE_COLUMNS + ID_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    base = path.parent
    for column in ("cover_path", "audio_path"):
        table[column] = [str(base / p) if p and not Path(p).is_absolute() else p for p in table[column]]
    return table, header


class _Resolver:
    """Turns a row into a local cover file and audio file (catalogue lookup, URL download, cached)."""

    def __init__(self, catalogue: str | Path | None, download_dir: Path) -> None:
        self.downloader = Downloader(download_dir)
        self.catalogue: dict[str, dict[str, str]] = {}
        if catalogue:
            table = pd.read_csv(catalogue, dtype=str, keep_default_na=False)
            if not set(ID_COLUMNS) & set(table.columns):
                raise ValueError(f"catalogue {catalogue} has no {' or '.join(ID_COLUMNS)} column to look ids up in; "
                                 f"its columns are {list(table.columns)}")
            base = Path(catalogue).parent
            for column in ("cover_path", "audio_path"):
                values = table[column] if column in table.columns else pd.Series("", index=table.index)
                table[column] = [str(base / p) if p and not Path(p).is_absolute() else p for p in values]
            for key in ID_COLUMNS:
                if key in table.columns:
                    for ident, cover, audio in zip(table[key], table["cover_path"], table["audio_path"]):
                        self.catalogue.setdefault(ident, {"cover_path": cover, "audio_path": audio})

    def files(self, rows: pd.DataFrame, modalities: list[str]) -> list[tuple[str, str, str]]:
        """``(cover file, audio file, row error)`` per row; a file that could not be had is ``"!<reason>"``.

        URLs are fetched (in parallel, once each) only for the ``modalities`` the model uses.
        """
        resolved = [self._local(row) for _, row in rows.iterrows()]
        wanted = []
        for (cover, audio, error), (_, row) in zip(resolved, rows.iterrows()):
            if not error and not cover and row["cover_url"] and "cover" in modalities:
                wanted.append((row["cover_url"], "cover", verify_cover))
            if not error and not audio and row["audio_url"] and "audio" in modalities:
                wanted.append((row["audio_url"], "audio", verify_audio))
        fetched = self.downloader.fetch_many(wanted)
        out = []
        for (cover, audio, error), (_, row) in zip(resolved, rows.iterrows()):
            if not error:
                cover = cover or fetched.get((row["cover_url"], "cover"), "")
                audio = audio or fetched.get((row["audio_url"], "audio"), "")
            out.append((cover, audio, error))
        return out

    def _local(self, row: pd.Series) -> tuple[str, str, str]:
        if row["row_error"]:
            return "", "", row["row_error"]
        track_id = row["track_id"] or row["item_id"]
        cover, audio = row["cover_path"], row["audio_path"]
        if not (cover or audio or row["cover_url"] or row["audio_url"]):
            if not track_id:
                return "", "", "empty row"
            known = self.catalogue.get(track_id)
            if known is None:
                return "", "", f"unknown id {track_id!r}" + ("" if self.catalogue else " (no catalogue given)")
            cover, audio = known["cover_path"], known["audio_path"]
        return cover, audio, ""


def _score_covers(model: CoverModel, paths: list[str], cache_dir: str | None,
                  device: str) -> tuple[np.ndarray, list[str]]:
    proba = np.full((len(paths), len(model.labels)), np.nan)
    errors = [p[1:] if p.startswith("!") else "" for p in paths]
    wanted = [i for i, p in enumerate(paths) if p and not p.startswith("!")]
    if not wanted:
        return proba, errors
    items = pd.DataFrame({"item_id": [str(i) for i in wanted], "cover_path": [paths[i] for i in wanted], "md5": ""})
    kept, kept_proba = predict_covers(model, items, cache_dir, device=device)
    for item_id, reason in zip(kept.problems["item_id"], kept.problems["reason"]):
        errors[int(item_id)] = reason
    proba[kept.items["item_id"].astype(int).to_numpy()] = kept_proba
    return proba, errors


def _score_audio(model: AudioModel, paths: list[str], cache_dir: str | None, device: str,
                 n_jobs: int) -> tuple[np.ndarray, list[str]]:
    proba = np.full((len(paths), len(model.labels)), np.nan)
    errors = [p[1:] if p.startswith("!") else "" for p in paths]
    unique = sorted({p for p in paths if p and not p.startswith("!")})
    if not unique:
        return proba, errors
    clips = pd.DataFrame({"item_id": unique, "audio_path": unique})
    scored, clip_proba, problems = predict_audio(model, clips, cache_dir, n_jobs=n_jobs, device=device)
    by_path = dict(zip(scored["item_id"], clip_proba))
    reasons = dict(zip(problems["item_id"], problems["reason"]))
    for i, path in enumerate(paths):
        if path in by_path:
            proba[i] = by_path[path]
        elif path in reasons or path in unique:
            errors[i] = reasons.get(path) or "audio could not be scored"
    return proba, errors


@dataclass
class Scores:
    """Each track's class probabilities per modality (NaN rows: not scored, the reason in the errors) and fused."""

    p_cover: np.ndarray
    p_audio: np.ndarray
    fused: np.ndarray
    cover_errors: list[str]
    audio_errors: list[str]


def score_files(scorer: TrackScorer, covers: list[str], audios: list[str], cache_dir: str | None, device: str,
                n_jobs: int = 1) -> Scores:
    """Score tracks given their local files (``""``: none; ``"!<reason>"``: could not be had).

    Each modality goes through its branch's predict path; where both are present the run's fusion
    head combines them, and a track with one modality is scored by that branch, as in training.
    """
    n, k = len(covers), len(scorer.labels)
    p_cover, cover_errors = np.full((n, k), np.nan), [""] * n
    p_audio, audio_errors = np.full((n, k), np.nan), [""] * n
    if scorer.cover_model is not None:
        p_cover, cover_errors = _score_covers(scorer.cover_model, covers, cache_dir, device)
    if scorer.audio_model is not None:
        p_audio, audio_errors = _score_audio(scorer.audio_model, audios, cache_dir, device, n_jobs)
    has_cover, has_audio = present(p_cover), present(p_audio)
    fused = np.where(has_cover[:, None], p_cover, p_audio)
    either = has_cover | has_audio
    if scorer.fusion_head is not None and either.any():
        fused[either] = scorer.fusion_head.predict_proba(fusion_inputs(p_cover[either], p_audio[either]))
    return Scores(p_cover, p_audio, fused, cover_errors, audio_errors)


def output_columns(scorer: TrackScorer) -> list[str]:
    """The columns of a scores table, in order."""
    return ["row", "track_id", "item_id", "status", "modalities", "predicted",
            *probability_columns(scorer.labels), "cover_error", "audio_error"]


def score_batch(scorer: TrackScorer, rows: pd.DataFrame, resolver: _Resolver, cache_dir: str | None,
                device: str, n_jobs: int = 1) -> pd.DataFrame:
    """Output rows for a batch of input rows (same order): status, modalities, prediction, probabilities."""
    resolved = resolver.files(rows, scorer.modalities)
    covers = [c if not e else "" for c, _, e in resolved]
    audios = [a if not e else "" for _, a, e in resolved]
    scored = score_files(scorer, covers, audios, cache_dir, device, n_jobs)
    p_cover, p_audio, fused = scored.p_cover, scored.p_audio, scored.fused
    cover_errors, audio_errors = scored.cover_errors, scored.audio_errors
    has_cover, has_audio = present(p_cover), present(p_audio)
    out = rows[["row", "track_id", "item_id"]].copy().reset_index(drop=True)
    statuses, modalities = [], []
    for i, (cover, audio, row_error) in enumerate(resolved):
        used = [m for m, present in (("cover", has_cover[i]), ("audio", has_audio[i])) if present]
        modalities.append("+".join(used))
        if used:
            statuses.append("ok")
        elif row_error:
            statuses.append(row_error)
        else:
            reasons = [f"{m}: {e}" for m, e in (("cover", cover_errors[i]), ("audio", audio_errors[i])) if e]
            asked = [m for m, f in (("cover", cover), ("audio", audio)) if f and m in scorer.modalities]
            statuses.append("; ".join(reasons) or ("no input for the model's modalities "
                                                   f"({'+'.join(scorer.modalities)})" if not asked else "not scored"))
    out["status"] = statuses
    out["modalities"] = modalities
    out = with_predictions(out, fused, scorer.labels)
    columns = probability_columns(scorer.labels)
    out[columns] = out[columns].round(6)
    out["cover_error"] = cover_errors
    out["audio_error"] = audio_errors
    return out


def _drop_partial_last_line(path: Path) -> None:
    """A run killed while writing leaves half a line at the end: cut it, so that row is scored again."""
    content = path.read_bytes()
    if content and not content.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(content.rfind(b"\n") + 1)


def score_table(input_csv: str | Path, model_dir: str | Path, output_csv: str | Path, shard: str = "0/1",
                batch_size: int = 64, catalogue: str | Path | None = None, cache_dir: str | Path | None = None,
                download_dir: str | Path | None = None, device: str = "auto", n_jobs: int = 1,
                progress: bool = True) -> dict[str, Any]:
    """Score this shard's rows of ``input_csv`` into ``output_csv``, resuming after rows already written.

    ``n_jobs`` processes extract audio features; ``cache_dir`` caches them (and nothing is cached without it).

    Returns a summary: rows in the shard, rows written now, rows skipped as done, statuses, seconds.
    """
    index, count = parse_shard(shard)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    output_csv = Path(output_csv)
    scorer = load_track_scorer(model_dir)
    table, _ = read_track_table(input_csv)
    mine = table[table["row"] % count == index]
    run_record = {"input": str(Path(input_csv).resolve()), "model_dir": str(Path(model_dir).resolve()),
                  "shard": f"{index}/{count}", "labels": scorer.labels}
    record_path = output_csv.with_name(output_csv.name + ".run.json")
    done: set[int] = set()
    if output_csv.is_file() and output_csv.stat().st_size:
        previous = json.loads(record_path.read_text()) if record_path.is_file() else {}
        if previous and previous != run_record:
            raise ValueError(f"{output_csv} was written by a different run ({previous}); "
                             "give another output path or delete it")
        _drop_partial_last_line(output_csv)
        if output_csv.stat().st_size:
            done = set(pd.read_csv(output_csv, usecols=["row"])["row"].astype(int))
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    write_json(record_path, run_record)
    todo = mine[~mine["row"].isin(done)]
    resolver = _Resolver(catalogue, Path(download_dir or output_csv.parent / "downloads"))
    cache = str(cache_dir) if cache_dir else None
    start = time.perf_counter()
    statuses: list[str] = []
    batches = range(0, len(todo), batch_size)
    for first in tqdm(batches, desc=f"score shard {index}/{count}", unit="batch", disable=not progress):
        out = score_batch(scorer, todo.iloc[first:first + batch_size], resolver, cache, device, n_jobs)
        header = not output_csv.is_file() or not output_csv.stat().st_size
        with output_csv.open("a", newline="") as handle:
            handle.write(out.to_csv(header=header, index=False))  # one write per batch
            handle.flush()
            os.fsync(handle.fileno())
        statuses += out["status"].tolist()
    if not output_csv.is_file():  # a table of no rows: the output is its header alone, as for any other run
        write_text_atomic(output_csv, ",".join(output_columns(scorer)) + "\n")
        log.warning("%s has no rows to score", input_csv)
    seconds = time.perf_counter() - start
    summary = {"rows_in_shard": len(mine), "written_now": len(todo), "already_done": len(mine) - len(todo),
               "ok": sum(s == "ok" for s in statuses), "not_ok": sum(s != "ok" for s in statuses),
               "seconds": round(seconds, 2), "tracks_per_s": round(len(todo) / seconds, 2) if seconds and len(todo) else None,
               "modalities": scorer.modalities, "output": str(output_csv)}
    log.info("scored %s", summary)
    return summary
