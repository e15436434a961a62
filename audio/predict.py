"""The audio branch's one predict path: a trained audio model and clips → class probabilities per clip.

Training (its held-out predictions), folder scoring and batch scoring all call it; it never
imports training code. A clip is cut into the windows the model was trained on (the whole clip,
or ten 3-second segments), each window's inputs are computed (GTZAN features and/or log-mels,
cached), and a segment model scores a clip by the mean of its windows' probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from audio.extract import (MEL_FRAMES, DecodedFeatureWindows, decode_feature_windows, extract_features,
                           extract_log_mels, extract_musicnn)
from audio.mel import MelParams
from audio.models import build_audio_model
from data.gtzan import FEATURE_COLUMNS, segment_items
from data.items import problems_frame
from engine.inference import load_checkpoint, mean_by_group, predict_outputs, predict_proba


@dataclass
class AudioInputs:
    """Windows that have every input a model needs, aligned row for row with the arrays."""

    items: pd.DataFrame
    arrays: dict[str, np.ndarray]
    problems: pd.DataFrame

    def subset(self, mask: np.ndarray) -> "AudioInputs":
        mask = np.asarray(mask, dtype=bool)
        return AudioInputs(self.items[mask].reset_index(drop=True), {k: v[mask] for k, v in self.arrays.items()},
                           self.problems)

    def dataset(self, kinds: tuple[str, ...]) -> Dataset:
        # np.require copies only arrays that are read-only (cached inputs can be), which torch cannot wrap.
        y = self.items["y"].to_numpy(np.int64) if "y" in self.items else np.zeros(len(self.items), np.int64)
        return _TensorTuples([torch.from_numpy(np.require(self.arrays[k], requirements="W")) for k in kinds],
                             torch.tensor(y))


class _TensorTuples(Dataset):
    """``(input, y)`` or ``((input_1, input_2, …), y)`` pairs, as the trainer expects."""

    def __init__(self, inputs: list[torch.Tensor], y: torch.Tensor) -> None:
        self.inputs, self.y = inputs, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        x = tuple(t[index] for t in self.inputs)
        return (x if len(x) > 1 else x[0]), self.y[index]


#: Input kinds computed by musicnn, and the output of the network each is.
MUSICNN_INPUTS = {"musicnn_tags": "tags", "musicnn_embedding": "embedding"}


def input_spec(kinds: tuple[str, ...], segments: int | None, features: list[str] | None = None,
               musicnn: list[str] | None = None, min_seconds: float = 0.0) -> dict[str, Any]:
    """What a checkpoint records of a model's inputs, so a predict path computes them as training did
    (and refuses audio files shorter than ``min_seconds``)."""
    return {"kinds": list(kinds), "segments": segments, "mel": MelParams().as_dict(), "mel_frames": MEL_FRAMES,
            "features": list(features or FEATURE_COLUMNS), "musicnn": list(musicnn or []),
            "min_seconds": float(min_seconds)}


def audio_windows(clips: pd.DataFrame, segments: int | None) -> pd.DataFrame:
    """The windows a model reads: each clip whole, or ``segments`` 3-second segments; ``clip_item_id`` names the clip."""
    if segments:
        return segment_items(clips, segments)
    return clips.assign(clip_item_id=clips["item_id"]).reset_index(drop=True)


def needs_audio_files(kinds: tuple[str, ...], items: pd.DataFrame, features: list[str] | None = None) -> bool:
    """Whether a model reads audio files (log-mels, musicnn, or features the table does not already hold)."""
    features = list(features or FEATURE_COLUMNS)
    return bool({"mel", *MUSICNN_INPUTS} & set(kinds)) or ("features" in kinds and not set(features) <= set(items.columns))


def _computes_features(kinds: tuple[str, ...], items: pd.DataFrame, features: list[str]) -> bool:
    """Whether the GTZAN features a model reads are computed from the audio (the table lacks them)."""
    if "features" not in kinds or set(features) <= set(items.columns):
        return False
    if not set(features) <= set(FEATURE_COLUMNS):
        missing = sorted(set(features) - set(items.columns))
        raise ValueError(f"the audio model reads the table columns {features}; the table lacks {missing}")
    return True


def audio_inputs(items: pd.DataFrame, kinds: tuple[str, ...], cache_dir: str | Path | None, n_jobs: int = 1,
                 progress: bool = True, mel: MelParams = MelParams(), mel_frames: int = MEL_FRAMES,
                 features: list[str] | None = None, musicnn: list[str] | None = None,
                 min_seconds: float = 0.0, feature_device: str | None = None,
                 decoded: DecodedFeatureWindows | None = None) -> AudioInputs:
    """Features and/or log-mels of each window.

    ``features`` (default: the 57 GTZAN features) are read from the item table when it has those
    columns (a feature table, a catalogue's descriptors), else computed from the audio when they
    are GTZAN features (all 57 or some; computed in batches on ``feature_device`` when given, see
    :func:`audio.extract.extract_features`; from ``decoded``, these windows already decoded by
    :func:`decode_clip_features`, when given). Windows whose audio fails, or whose feature cells are
    empty or not numbers, are dropped and listed in ``problems``.
    """
    items = items.reset_index(drop=True)
    features = list(features or FEATURE_COLUMNS)
    problems = []
    if _computes_features(kinds, items, features):
        if decoded is not None:
            if decoded.items["item_id"].tolist() != items["item_id"].tolist():
                raise ValueError("the decoded windows are not these items' windows")
            extracted = decoded.extract(feature_device or "cpu")
        else:
            extracted = extract_features(items, cache_dir=cache_dir, n_jobs=n_jobs, progress=progress,
                                         min_seconds=min_seconds, device=feature_device)
        items, problems = extracted.items, [extracted.problems]
    if "features" in kinds:
        values = items[features].apply(pd.to_numeric, errors="coerce")
        bad = values.isna().any(axis=1).to_numpy()
        if bad.any():
            problems.append(problems_frame([{"where": "features", "item_id": item_id,
                                             "reason": "feature values missing or not numbers: "
                                                       + ", ".join(c for c in features if pd.isna(row[c]))}
                                            for item_id, (_, row) in zip(items.loc[bad, "item_id"],
                                                                         values[bad].iterrows())]))
            items = items[~bad].reset_index(drop=True)
    arrays: dict[str, np.ndarray] = {}
    if "mel" in kinds:
        kept, mels = extract_log_mels(items, cache_dir=cache_dir, n_jobs=n_jobs, progress=progress, mel=mel,
                                      n_frames=mel_frames, min_seconds=min_seconds)
        items, arrays["mel"] = kept.items, mels
        problems.append(kept.problems)
    for kind in set(kinds) & set(MUSICNN_INPUTS):
        if not musicnn:
            raise ValueError(f"input {kind} needs the musicnn networks to use (audio.model.musicnn)")
        kept, arrays[kind] = extract_musicnn(items, tuple(musicnn), MUSICNN_INPUTS[kind], cache_dir=cache_dir,
                                             n_jobs=n_jobs, progress=progress, min_seconds=min_seconds)
        items = kept.items
        problems.append(kept.problems)
    if "features" in kinds:
        arrays["features"] = items[features].apply(pd.to_numeric).to_numpy(np.float32)
    problems_table = pd.concat(problems, ignore_index=True) if problems else pd.DataFrame(
        columns=["where", "item_id", "reason"])
    return AudioInputs(items, arrays, problems_table)


@dataclass
class AudioModel:
    """A trained audio network, its classes and the inputs it was trained on (see :func:`input_spec`)."""

    network: nn.Module
    labels: list[str]
    spec: dict[str, Any]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.spec["kinds"])

    @property
    def segments(self) -> int | None:
        return self.spec.get("segments")


def load_audio_model(checkpoint_path: str | Path) -> tuple[AudioModel, dict[str, Any]]:
    """Rebuild a trained audio model from its ``checkpoint.pt``: ``(model, checkpoint record)``."""
    record = load_checkpoint(checkpoint_path)
    if "model" not in record or "inputs" not in record:
        raise ValueError(f"{checkpoint_path} is not an audio-branch checkpoint (no model/input record)")
    network = build_audio_model(record["model"], list(record["labels"]))
    network.load_state_dict(record["model_state"])
    return AudioModel(network.eval(), list(record["labels"]), dict(record["inputs"])), record


def predict_audio_inputs(model: AudioModel, inputs: AudioInputs,
                         device: str = "auto") -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Windows' inputs → ``(clip rows, clip probabilities, window probabilities)``.

    A segment model scores a clip by the mean of its windows; a whole-clip model's clip is its
    one window. Clip rows keep the first window's columns, with ``item_id`` set to the clip's and
    (segment models) ``windows``, the number of windows averaged.
    """
    if len(inputs.items) == 0:
        empty = np.zeros((0, len(model.labels)))
        return inputs.items, empty, empty
    proba = predict_proba(model.network, inputs.dataset(model.kinds), device=device)
    if not model.segments:
        return inputs.items, proba, proba
    y = inputs.items["y"] if "y" in inputs.items else np.zeros(len(inputs.items), dtype=int)
    clips, _, clip_proba = mean_by_group(inputs.items["clip_item_id"], y, proba)
    clip_rows = inputs.items.drop_duplicates("clip_item_id").set_index("clip_item_id").loc[clips].reset_index()
    clip_rows["item_id"] = clip_rows["clip_item_id"]
    clip_rows["windows"] = inputs.items.groupby("clip_item_id").size().loc[clips].to_numpy()
    return clip_rows, clip_proba, proba


@dataclass
class ClipInputs:
    """Clips cut into a model's windows, and those windows' inputs (what :func:`predict_clips` reads)."""

    windows: pd.DataFrame
    inputs: AudioInputs


def clip_inputs(spec: dict[str, Any], clips: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                progress: bool = False, feature_device: str | None = None,
                decoded: DecodedFeatureWindows | None = None) -> ClipInputs:
    """Clips (``item_id``, ``audio_path``) → the inputs a model of input record ``spec`` (:func:`input_spec`) reads.

    Needs no network weights (musicnn inputs excepted: they are musicnn's outputs), so it can run
    apart from the model: in feature workers or other processes. ``decoded``: the clips' windows as
    :func:`decode_clip_features` left them, their features computed here on ``feature_device``.
    """
    windows = audio_windows(clips.assign(segment=-1), spec.get("segments"))
    inputs = audio_inputs(windows, tuple(spec["kinds"]), cache_dir, n_jobs=n_jobs, progress=progress,
                          mel=MelParams(**spec["mel"]), mel_frames=spec["mel_frames"], features=spec.get("features"),
                          musicnn=spec.get("musicnn"), min_seconds=spec.get("min_seconds", 0.0),
                          feature_device=feature_device, decoded=decoded)
    return ClipInputs(windows, inputs)


def decode_clip_features(spec: dict[str, Any], clips: pd.DataFrame, cache_dir: str | Path | None = None,
                         n_jobs: int = 1) -> DecodedFeatureWindows | None:
    """The first half of :func:`clip_inputs` for a model that reads GTZAN features computed from the audio
    (and nothing else): the windows decoded, their features left for a device (a GPU actor). ``None`` for
    any other model, whose inputs :func:`clip_inputs` computes whole."""
    if tuple(spec["kinds"]) != ("features",):
        return None
    windows = audio_windows(clips.assign(segment=-1), spec.get("segments"))
    if not _computes_features(("features",), windows, list(spec.get("features") or FEATURE_COLUMNS)):
        return None
    return decode_feature_windows(windows, cache_dir, n_jobs, progress=False,
                                  min_seconds=spec.get("min_seconds", 0.0))


def predict_clips(model: AudioModel, prepared: ClipInputs,
                  device: str = "auto") -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """:func:`clip_inputs`' result → ``(clips scored, their probabilities, problems per clip)``.

    A segment past the end of a short file is skipped; a clip with no usable window is left out,
    and ``problems`` (columns ``item_id``, ``reason``) gives the first reason of each such clip.
    """
    scored, proba, _ = predict_audio_inputs(model, prepared.inputs, device)
    problems = prepared.inputs.problems
    clip_of = dict(zip(prepared.windows["item_id"], prepared.windows["clip_item_id"]))
    reasons = problems.assign(item_id=problems["item_id"].map(clip_of)).groupby("item_id", sort=False)["reason"].first()
    return scored, proba, reasons[~reasons.index.isin(set(scored["item_id"]))].reset_index()


def predict_audio(model: AudioModel, clips: pd.DataFrame, cache_dir: str | Path | None = None, n_jobs: int = 1,
                  device: str = "auto", progress: bool = False) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Clips (``item_id``, ``audio_path``) → ``(clips scored, their probabilities, problems per clip)``:
    :func:`clip_inputs` then :func:`predict_clips`."""
    return predict_clips(model, clip_inputs(model.spec, clips, cache_dir, n_jobs, progress), device)


class _Embedder(nn.Module):
    """A model's ``embed`` as a module (the layer before its classifier)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.network.embed(inputs)


def audio_embeddings(model: AudioModel, inputs: AudioInputs, device: str = "auto") -> tuple[pd.DataFrame, np.ndarray]:
    """Each clip's penultimate-layer vector (a segment model: the mean over its windows): ``(clip rows, vectors)``."""
    vectors = predict_outputs(_Embedder(model.network), inputs.dataset(model.kinds), device=device)
    if not model.segments:
        return inputs.items, vectors
    y = inputs.items["y"] if "y" in inputs.items else np.zeros(len(inputs.items), dtype=int)
    clips, _, clip_vectors = mean_by_group(inputs.items["clip_item_id"], y, vectors)
    rows = inputs.items.drop_duplicates("clip_item_id").set_index("clip_item_id").loc[clips].reset_index()
    return rows.assign(item_id=rows["clip_item_id"]), clip_vectors
