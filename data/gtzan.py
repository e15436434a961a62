"""GTZAN: feature tables (30-second clips and 3-second segments), audio files, fault-filtered split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.items import LoadResult, finish_table, problems_frame, read_delimited

_SPECTRAL = [
    "chroma_stft", "rms", "spectral_centroid", "spectral_bandwidth", "rolloff",
    "zero_crossing_rate", "harmony", "perceptr",
]
#: The 57 feature columns of ``features_30_sec.csv``/``features_3_sec.csv``, in file order.
FEATURE_COLUMNS: list[str] = (
    [f"{name}_{stat}" for name in _SPECTRAL for stat in ("mean", "var")]
    + ["tempo"]
    + [f"mfcc{i}_{stat}" for i in range(1, 21) for stat in ("mean", "var")]
)
AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3", ".au")
#: Samples in one 3-second segment of ``features_3_sec.csv`` (at 22,050 Hz): segment k starts at
#: k · 3 s (k · 66,150 samples) and holds 66,149 samples, which reproduces that table exactly.
SEGMENT_SAMPLES = 66149
SEGMENT_HOP_SAMPLES = 66150


def clip_id(filename: str) -> str:
    """``'blues.00000.wav'`` → ``'blues.00000'``; ``'blues.00000.3.wav'`` → ``'blues.00000'``."""
    genre, number = Path(filename).name.split(".")[:2]
    return f"{genre}.{number}"


def find_audio(root: Path, clip: str) -> str:
    """Path of the clip's audio under ``root/<genre>/`` in any known format, or ``''``."""
    genre = clip.split(".")[0]
    for suffix in AUDIO_SUFFIXES:
        candidate = root / genre / f"{clip}{suffix}"
        if candidate.is_file():
            return str(candidate)
    return ""


def load_gtzan_features(csv_path: str | Path, audio_dir: str | Path | None = None) -> LoadResult:
    """Load ``features_30_sec.csv`` or ``features_3_sec.csv`` into an item table.

    Clip rows use the clip as ``item_id`` and ``group``; segment rows (``name.N.wav``) keep
    their parent clip as ``group`` and carry ``segment`` (index) so they never straddle a split.
    ``audio_path`` points into ``audio_dir`` (default: ``audio/`` beside the CSV) when the
    clip's audio exists. Rows with a wrong field count or non-numeric features are left out
    and listed in ``problems``.
    """
    csv_path = Path(csv_path).resolve()
    header, rows, problems = read_delimited(csv_path)
    missing = [c for c in ["filename", "label", *FEATURE_COLUMNS] if c not in header]
    if missing:
        raise ValueError(f"{csv_path} is not a GTZAN feature table: missing columns {missing}")
    frame = pd.DataFrame(rows, columns=header)
    frame["_line"] = range(2, len(frame) + 2)
    features = frame[FEATURE_COLUMNS].apply(pd.to_numeric, errors="coerce")
    bad = features.isna().any(axis=1)
    for _, row in frame[bad].iterrows():
        problems.append({
            "where": f"{csv_path.name}:{row['_line']}", "item_id": row["filename"],
            "reason": "malformed row: non-numeric feature value",
        })
    frame, features = frame[~bad], features[~bad]

    audio_root = Path(audio_dir) if audio_dir else csv_path.parent / "audio"
    parts = frame["filename"].str.split(".")
    is_segment = parts.str.len() == 4
    clips = frame["filename"].map(clip_id)
    table = pd.DataFrame({
        "item_id": frame["filename"].str.replace(r"\.(wav|au)$", "", regex=True),
        "label": frame["label"].str.strip().str.lower(),
        "group": clips,
        "source": "gtzan",
        "cover_path": "",
        "audio_path": [find_audio(audio_root, c) for c in clips],
        "clip_id": clips,
        "segment": parts.str[2].where(is_segment, "").map(lambda s: int(s) if s else -1),
        "length": pd.to_numeric(frame["length"], errors="coerce"),
    })
    table = pd.concat([table.reset_index(drop=True), features.reset_index(drop=True)], axis=1)
    return LoadResult(finish_table(table), problems_frame(problems))


def load_gtzan_audio(audio_dir: str | Path) -> LoadResult:
    """Item table of the audio files under ``audio_dir/<genre>/`` (no features)."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"GTZAN audio folder not found: {audio_dir}")
    records = []
    for path in sorted(audio_dir.glob("*/*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        clip = clip_id(path.name)
        records.append({
            "item_id": clip, "label": path.parent.name.lower(), "group": clip, "source": "gtzan",
            "cover_path": "", "audio_path": str(path), "clip_id": clip, "segment": -1,
        })
    return LoadResult(finish_table(pd.DataFrame(records)))


def load_predefined_split(split_dir: str | Path) -> pd.DataFrame:
    """Read ``train.txt``/``valid.txt``/``test.txt`` (``genre/genre.000NN.wav`` lines).

    Returns columns ``clip_id`` and ``split`` (``train``/``val``/``test``).
    """
    split_dir = Path(split_dir)
    names = {"train": "train", "valid": "val", "val": "val", "test": "test"}
    records = []
    for file_name, split in names.items():
        path = split_dir / f"{file_name}.txt"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                records.append({"clip_id": clip_id(line.strip()), "split": split})
    if not records:
        raise FileNotFoundError(f"No train/valid/test .txt split files in {split_dir}")
    table = pd.DataFrame(records)
    repeated = table["clip_id"][table["clip_id"].duplicated()]
    if len(repeated):
        raise ValueError(f"Predefined split lists clips twice: {sorted(set(repeated))[:5]}")
    return table


def segment_items(clips: pd.DataFrame, n_segments: int = 10) -> pd.DataFrame:
    """One row per 3-second segment of each clip: ``item_id`` ``<clip>.<k>``, ``segment`` k, same group.

    Splits are made on the clips first and segments inherit their clip's part, so the segments
    of one clip never straddle train and test. A 30-second GTZAN clip holds 10 whole segments.
    """
    if "segment" in clips.columns and (clips["segment"] >= 0).any():
        raise ValueError("segment_items needs whole clips (segment -1), got segment rows")
    rows = clips.loc[clips.index.repeat(n_segments)].copy()
    rows["clip_item_id"] = rows["item_id"]
    rows["segment"] = np.tile(np.arange(n_segments), len(clips))
    rows["item_id"] = rows["clip_item_id"] + "." + rows["segment"].astype(str)
    return rows.reset_index(drop=True)
