"""Pairing cover items with audio items into fused items.

Real pairing: both modalities belong to the same track (same ``item_id`` in both branches'
outputs). Synthetic pairing: the shared data has covers and audio from different collections,
so pairs are drawn genre-matched, within one split part, with a fixed seed — every result built
on them must say ``pairing: synthetic``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PAIR_COLUMNS = ["fused_id", "split", "label", "y", "group", "cover_item_id", "audio_item_id"]


def real_pairs(covers: pd.DataFrame, audio: pd.DataFrame) -> pd.DataFrame:
    """Items present in both branch outputs under the same ``item_id``, plus single-modality rest.

    ``group`` (album/artist group, for intervals that resample groups) is the item's own id when an
    output has no group column.
    """
    covers, audio = (t if "group" in t.columns else t.assign(group=t["item_id"]) for t in (covers, audio))
    merged = covers[["item_id", "split", "label", "y", "group"]].merge(
        audio[["item_id", "split", "label", "y", "group"]], on="item_id", how="outer", suffixes=("_c", "_a"),
        indicator=True
    )
    both = merged[merged["_merge"] == "both"]
    if ((both["split_c"] != both["split_a"]) | (both["label_c"] != both["label_a"])).any():
        raise ValueError("an item has different split parts or labels in the two branches; re-run them on one split")
    out = pd.DataFrame({
        "fused_id": merged["item_id"],
        "split": merged["split_c"].fillna(merged["split_a"]),
        "label": merged["label_c"].fillna(merged["label_a"]),
        "y": merged["y_c"].fillna(merged["y_a"]).astype(int),
        "group": merged["group_c"].fillna(merged["group_a"]),
        "cover_item_id": merged["item_id"].where(merged["_merge"] != "right_only", ""),
        "audio_item_id": merged["item_id"].where(merged["_merge"] != "left_only", ""),
    })
    return out[PAIR_COLUMNS].reset_index(drop=True)


def synthetic_pairs(covers: pd.DataFrame, audio: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Genre-matched random pairs, drawn only within the same split part and genre.

    Within each (split, label) cell both lists are shuffled with ``seed`` and zipped; items left
    over (the larger modality) become single-modality items (the other id is ``''``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    cells = sorted(set(zip(covers["split"], covers["label"])) | set(zip(audio["split"], audio["label"])))
    for split, label in cells:
        c = covers[(covers["split"] == split) & (covers["label"] == label)]
        a = audio[(audio["split"] == split) & (audio["label"] == label)]
        y = int((c["y"] if len(c) else a["y"]).iloc[0])
        c_ids = list(rng.permutation(c["item_id"].to_numpy()))
        a_ids = list(rng.permutation(a["item_id"].to_numpy()))
        n = max(len(c_ids), len(a_ids))
        c_ids += [""] * (n - len(c_ids))
        a_ids += [""] * (n - len(a_ids))
        for cover_id, audio_id in zip(c_ids, a_ids):
            fused_id = f"{cover_id or '-'}+{audio_id or '-'}"
            rows.append({"fused_id": fused_id, "split": split, "label": label, "y": y, "group": fused_id,
                         "cover_item_id": cover_id, "audio_item_id": audio_id})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def modality_counts(pairs: pd.DataFrame) -> dict[str, int]:
    """How many fused items have both modalities, only a cover, only audio."""
    has_cover, has_audio = pairs["cover_item_id"] != "", pairs["audio_item_id"] != ""
    return {"both": int((has_cover & has_audio).sum()), "cover_only": int((has_cover & ~has_audio).sum()),
            "audio_only": int((~has_cover & has_audio).sum())}
