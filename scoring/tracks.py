"""Scoring tracks with a trained model folder (covers, audio, or both fused), one batch at a time.

Two steps, which every scoring engine calls (the local loop in :mod:`scoring.jobs`, Ray Data in
:mod:`scoring.ray_engine`): :func:`prepare_batch` fetches a batch's files and computes what the
models read (decoded covers, audio windows' inputs) without the models' weights, on CPU workers;
:func:`output_rows` runs the models and the fusion head and gives one output row per input row,
with ``status`` (``ok``, or why the row could not be scored), the modalities used, the predicted
genre and every class probability. A modality that fails while the other works leaves the row
``ok`` with the failure in ``cover_error``/``audio_error``.

Each modality is scored by its branch's predict path (:mod:`covers.predict`, :mod:`audio.predict`)
and the two are combined by the run's fitted fusion head, exactly as in training.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acquire.http import Downloader
from acquire.verify import verify_audio, verify_cover
from audio.extract import DecodedFeatureWindows
from audio.predict import AudioModel, ClipInputs, clip_inputs, decode_clip_features, load_audio_model, predict_clips
from covers.inputs import decode_covers
from covers.predict import CoverModel, load_cover_model, predict_decoded_covers
from engine.inference import (BEST_CHECKPOINT, RESUME_CHECKPOINT, check_precision, read_checkpoint, resolve_device,
                              unfinished_training)
from engine.predictions import present, probability_columns, with_predictions
from fusion.heads import FUSION_HEAD, FusionHead, fusion_inputs, load_fusion_head


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
    #: The cover network's precision (``engine.inference.PRECISIONS``): ``auto`` is bf16 on a GPU only.
    cover_precision: str = "auto"

    @property
    def modalities(self) -> list[str]:
        return [name for name, part in (("cover", self.cover_model), ("audio", self.audio_model)) if part is not None]


def load_track_scorer(model_dir: str | Path, cover_precision: str = "auto") -> TrackScorer:
    """A main-job run folder (``covers/``, ``audio/``, ``fusion/``) or one branch's folder → :class:`TrackScorer`
    whose cover network runs in ``cover_precision``."""
    check_precision(cover_precision)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    cover_model: CoverModel | None = None
    audio_model: AudioModel | None = None
    labels: dict[str, list[str]] = {}
    folders = (model_dir / "covers", model_dir / "audio", model_dir)
    # A branch killed mid-training: the run has no model of it (and no fusion head); scoring on with the
    # other branch alone would quietly be another model than the run's.
    unfinished = [f for f in folders if (f / RESUME_CHECKPOINT).is_file() and not (f / BEST_CHECKPOINT).is_file()]
    if unfinished:
        raise FileNotFoundError(unfinished_training(unfinished[0]))
    for folder in folders:
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
    return TrackScorer(next(iter(labels.values())), cover_model, audio_model, fusion_head, model_dir, fusion_method,
                       cover_precision)


@dataclass(frozen=True)
class ScoringInputs:
    """What preparing a batch needs of the models, without their weights: the cover size, the audio inputs."""

    modalities: tuple[str, ...]
    cover_size: int | None
    audio_spec: dict[str, Any] | None


def scoring_inputs(scorer: TrackScorer) -> ScoringInputs:
    return ScoringInputs(tuple(scorer.modalities),
                         scorer.cover_model.info.input_size if scorer.cover_model is not None else None,
                         dict(scorer.audio_model.spec) if scorer.audio_model is not None else None)


def fetch_files(rows: pd.DataFrame, modalities: Sequence[str], downloader: Downloader) -> list[tuple[str, str, str]]:
    """``(cover file, audio file, row error)`` per row of a resolved track table (:func:`scoring.tables.resolve_ids`);
    a file that could not be had is ``"!<reason>"``. URLs are fetched (in parallel, once each) only for
    the ``modalities`` the model uses."""
    columns = [rows[c].tolist() for c in ("row_error", "cover_path", "cover_url", "audio_path", "audio_url")]
    records = list(zip(*columns))
    wanted = []
    for row_error, cover_path, cover_url, audio_path, audio_url in records:
        if row_error:
            continue
        if not cover_path and cover_url and "cover" in modalities:
            wanted.append((cover_url, "cover", verify_cover))
        if not audio_path and audio_url and "audio" in modalities:
            wanted.append((audio_url, "audio", verify_audio))
    fetched = downloader.fetch_many(wanted) if wanted else {}
    return [("", "", row_error) if row_error else
            (cover_path or fetched.get((cover_url, "cover"), ""), audio_path or fetched.get((audio_url, "audio"), ""), "")
            for row_error, cover_path, cover_url, audio_path, audio_url in records]


def _usable(paths: list[str]) -> tuple[list[str], list[int]]:
    """Reasons of the files that could not be had (``"!<reason>"``) and the positions of the others."""
    return [p[1:] if p.startswith("!") else "" for p in paths], [i for i, p in enumerate(paths)
                                                                  if p and not p.startswith("!")]


@dataclass
class CoverBatch:
    """A batch's decoded covers ``uint8 (m, s, s, 3)`` at the rows ``positions``, and every row's cover error."""

    errors: list[str]
    positions: np.ndarray
    pixels: np.ndarray


def prepare_covers(size: int, paths: list[str], cache_dir: str | None) -> CoverBatch:
    errors, wanted = _usable(paths)
    if not wanted:
        return CoverBatch(errors, np.zeros(0, dtype=int), np.zeros((0, size, size, 3), np.uint8))
    items = pd.DataFrame({"item_id": [str(i) for i in wanted], "cover_path": [paths[i] for i in wanted], "md5": ""})
    kept, pixels = decode_covers(items, size, cache_dir, progress=False)
    for item_id, reason in zip(kept.problems["item_id"], kept.problems["reason"]):
        errors[int(item_id)] = reason
    return CoverBatch(errors, kept.items["item_id"].astype(int).to_numpy(), pixels)


@dataclass
class AudioBatch:
    """A batch's distinct audio files cut into windows with their inputs, and every row's audio error."""

    errors: list[str]
    paths: list[str]
    clips: ClipInputs | None
    #: Windows decoded but whose GTZAN features are still to compute (:func:`compute_deferred_features`).
    decoded: DecodedFeatureWindows | None = None


def _clip_table(paths: list[str]) -> pd.DataFrame:
    """A batch's distinct usable audio files as clips named by their paths."""
    _, wanted = _usable(paths)
    unique = sorted({paths[i] for i in wanted})
    return pd.DataFrame({"item_id": unique, "audio_path": unique})


def prepare_audio(spec: dict[str, Any], paths: list[str], cache_dir: str | None, n_jobs: int = 1,
                  feature_device: str | None = None, defer_features: bool = False) -> AudioBatch:
    """The audio inputs of a batch's files; ``defer_features``: a model reading GTZAN features gets its
    windows decoded only, the features left for :func:`compute_deferred_features` (on a GPU actor)."""
    errors, _ = _usable(paths)
    clips = _clip_table(paths)
    if clips.empty:
        return AudioBatch(errors, paths, None)
    decoded = decode_clip_features(spec, clips, cache_dir, n_jobs) if defer_features else None
    if decoded is not None:
        return AudioBatch(errors, paths, None, decoded)
    return AudioBatch(errors, paths, clip_inputs(spec, clips, cache_dir, n_jobs, feature_device=feature_device))


def compute_deferred_features(spec: dict[str, Any], audio: AudioBatch, device: str) -> AudioBatch:
    """A batch prepared with ``defer_features``: its decoded windows' features computed on ``device`` (and
    cached where the batch was to be), so the batch is as :func:`prepare_audio` would have made it; any
    other batch as it is."""
    if audio.decoded is None:
        return audio
    clips = clip_inputs(spec, _clip_table(audio.paths), audio.decoded.cache_dir, feature_device=device,
                        decoded=audio.decoded)
    return AudioBatch(audio.errors, audio.paths, clips)


@dataclass
class PreparedBatch:
    """Input rows with their files and the models' inputs: the CPU side of scoring, ready for the models."""

    rows: pd.DataFrame  # row, track_id, item_id
    files: list[tuple[str, str, str]]  # (cover file, audio file, row error) per row
    covers: CoverBatch | None
    audio: AudioBatch | None


def fetch_batch(spec: ScoringInputs, rows: pd.DataFrame, downloader: Downloader) -> PreparedBatch:
    """The first step of preparing a batch: its rows and their files (downloaded where given by URL);
    :func:`prepare_batch_covers` and :func:`prepare_batch_audio` fill in the models' inputs."""
    files = fetch_files(rows, spec.modalities, downloader)
    return PreparedBatch(rows[["row", "track_id", "item_id"]].reset_index(drop=True), files, None, None)


def prepare_batch_covers(spec: ScoringInputs, batch: PreparedBatch, cache_dir: str | None) -> PreparedBatch:
    """Decode the batch's covers (when the model reads covers)."""
    if spec.cover_size:
        batch.covers = prepare_covers(spec.cover_size, [c if not e else "" for c, _, e in batch.files], cache_dir)
    return batch


def prepare_batch_audio(spec: ScoringInputs, batch: PreparedBatch, cache_dir: str | None, n_jobs: int = 1,
                        feature_device: str | None = None, defer_features: bool = False) -> PreparedBatch:
    """Compute the batch's audio windows' inputs (when the model reads audio); see :func:`prepare_audio`."""
    if spec.audio_spec:
        batch.audio = prepare_audio(spec.audio_spec, [a if not e else "" for _, a, e in batch.files], cache_dir,
                                    n_jobs, feature_device, defer_features)
    return batch


def prepare_batch(spec: ScoringInputs, rows: pd.DataFrame, downloader: Downloader, cache_dir: str | None,
                  n_jobs: int = 1, feature_device: str | None = None, defer_features: bool = False) -> PreparedBatch:
    """Fetch the rows' files and compute what the models read (decoded covers, audio windows' inputs);
    ``feature_device``: GTZAN features in batches there, the ``n_jobs`` workers only decoding;
    ``defer_features``: GTZAN features left for :func:`output_rows` to compute on the models' device."""
    batch = prepare_batch_covers(spec, fetch_batch(spec, rows, downloader), cache_dir)
    return prepare_batch_audio(spec, batch, cache_dir, n_jobs, feature_device, defer_features)


@dataclass
class Scores:
    """Each track's class probabilities per modality (NaN rows: not scored, the reason in the errors) and fused."""

    p_cover: np.ndarray
    p_audio: np.ndarray
    fused: np.ndarray
    cover_errors: list[str]
    audio_errors: list[str]


#: One modality's class probabilities per row (NaN rows: not scored) and each row's error.
ModalityScores = tuple[np.ndarray, list[str]]


def cover_scores(scorer: TrackScorer, covers: CoverBatch | None, n: int, device: str = "auto") -> ModalityScores:
    """The cover network's probabilities of a batch's ``n`` rows (NaN where there is no usable cover)."""
    if scorer.cover_model is None or covers is None:
        return np.full((n, len(scorer.labels)), np.nan), [""] * n
    proba = np.full((n, len(scorer.labels)), np.nan)
    proba[covers.positions] = predict_decoded_covers(scorer.cover_model, covers.pixels, device, scorer.cover_precision)
    return proba, covers.errors


def audio_scores(scorer: TrackScorer, audio: AudioBatch | None, n: int, device: str = "auto") -> ModalityScores:
    """The audio model's probabilities of a batch's ``n`` rows (a file's windows averaged; NaN where none is usable)."""
    if scorer.audio_model is None or audio is None:
        return np.full((n, len(scorer.labels)), np.nan), [""] * n
    proba = np.full((n, len(scorer.labels)), np.nan)
    errors = list(audio.errors)
    if audio.clips is None:
        return proba, errors
    scored, clip_proba, problems = predict_clips(scorer.audio_model, audio.clips, device)
    by_path = dict(zip(scored["item_id"], clip_proba))
    reasons = dict(zip(problems["item_id"], problems["reason"]))
    wanted = set(audio.clips.windows["clip_item_id"])
    for i, path in enumerate(audio.paths):
        if path in by_path:
            proba[i] = by_path[path]
        elif path in wanted:
            errors[i] = reasons.get(path) or "audio could not be scored"
    return proba, errors


def fuse_scores(scorer: TrackScorer, cover: ModalityScores, audio: ModalityScores) -> Scores:
    """Where both modalities are present the run's fusion head combines them; a track with one modality is
    scored by that branch, as in training."""
    (p_cover, cover_errors), (p_audio, audio_errors) = cover, audio
    has_cover, has_audio = present(p_cover), present(p_audio)
    fused = np.where(has_cover[:, None], p_cover, p_audio)
    either = has_cover | has_audio
    if scorer.fusion_head is not None and either.any():
        fused[either] = scorer.fusion_head.predict_proba(fusion_inputs(p_cover[either], p_audio[either]))
    return Scores(p_cover, p_audio, fused, cover_errors, audio_errors)


def score_inputs(scorer: TrackScorer, covers: CoverBatch | None, audio: AudioBatch | None, n: int,
                 device: str = "auto") -> Scores:
    """The models' side of scoring: each modality through its branch's predict path, then :func:`fuse_scores`."""
    return fuse_scores(scorer, cover_scores(scorer, covers, n, device), audio_scores(scorer, audio, n, device))


def score_files(scorer: TrackScorer, covers: list[str], audios: list[str], cache_dir: str | None, device: str,
                n_jobs: int = 1) -> Scores:
    """Score tracks given their local files (``""``: none; ``"!<reason>"``: could not be had)."""
    spec = scoring_inputs(scorer)
    cover_batch = prepare_covers(spec.cover_size, covers, cache_dir) if spec.cover_size else None
    audio_batch = prepare_audio(spec.audio_spec, audios, cache_dir, n_jobs) if spec.audio_spec else None
    return score_inputs(scorer, cover_batch, audio_batch, len(covers), device)


def output_columns(scorer: TrackScorer) -> list[str]:
    """The columns of a scores table, in order."""
    return ["row", "track_id", "item_id", "status", "modalities", "predicted",
            *probability_columns(scorer.labels), "cover_error", "audio_error"]


def output_rows(scorer: TrackScorer, prepared: PreparedBatch, device: str = "auto") -> pd.DataFrame:
    """A prepared batch's output rows (same order): status, modalities, prediction, probabilities, errors.
    GTZAN features a batch left to compute (``defer_features``) are computed first, on ``device``."""
    if prepared.audio is not None:
        prepared.audio = compute_deferred_features(scorer.audio_model.spec, prepared.audio,
                                                   str(resolve_device(device)))
    return scored_rows(scorer, prepared, score_inputs(scorer, prepared.covers, prepared.audio, len(prepared.rows),
                                                      device))


def scored_rows(scorer: TrackScorer, prepared: PreparedBatch, scored: Scores) -> pd.DataFrame:
    """:func:`output_rows` from the batch's :class:`Scores`."""
    has_cover, has_audio = present(scored.p_cover), present(scored.p_audio)
    statuses, modalities = [], []
    for i, (cover, audio, row_error) in enumerate(prepared.files):
        used = [m for m, present in (("cover", has_cover[i]), ("audio", has_audio[i])) if present]
        modalities.append("+".join(used))
        if used:
            statuses.append("ok")
        elif row_error:
            statuses.append(row_error)
        else:
            reasons = [f"{m}: {e}" for m, e in (("cover", scored.cover_errors[i]), ("audio", scored.audio_errors[i]))
                       if e]
            asked = [m for m, f in (("cover", cover), ("audio", audio)) if f and m in scorer.modalities]
            statuses.append("; ".join(reasons) or ("no input for the model's modalities "
                                                   f"({'+'.join(scorer.modalities)})" if not asked else "not scored"))
    out = prepared.rows.assign(status=statuses, modalities=modalities)
    out = with_predictions(out, scored.fused, scorer.labels)
    columns = probability_columns(scorer.labels)
    out[columns] = out[columns].round(6)
    out["cover_error"] = scored.cover_errors
    out["audio_error"] = scored.audio_errors
    return out
