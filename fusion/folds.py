"""k-fold cross-validation summary: each fold's comparison, mean ± std over folds, and the pooled
out-of-fold predictions (every item tested once; synthetic pairs reuse the audio branch's test clips)
with one interval."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.io import write_json, write_text_atomic
from engine.report import HEADLINE
from fusion.compare import PAIRS_FILE, compare_modalities, read_comparison_items


def pool_folds(run_dir: str | Path, fold_dirs: Sequence[Path], fold_rows: Sequence[dict[str, dict[str, Any]]],
               labels: Sequence[str], pairing: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Write ``folds.md`` / ``folds.json`` (every fold's rows, mean ± std) and the pooled comparison in
    ``pooled/``; returns the pooled rows. Row names must be the same in every fold, apart from the
    majority class's, which is the one constant each fold's test items favour."""
    run_dir = Path(run_dir)
    tables, probabilities = zip(*(read_comparison_items(d, labels) for d in fold_dirs))
    items = pd.concat(tables, ignore_index=True)
    if items["item_id"].duplicated().any() and pairing == "real":
        raise ValueError("an item was tested in two folds: the folds overlap")
    stacked = {name: np.concatenate([p[name] for p in probabilities]) for name in probabilities[0]}
    names = list(stacked)  # image-only, audio-only, any other fused rows, the fused row
    if pairing == "real":
        groups, groups_are = items["group"].to_numpy(), "album/artist groups"
    else:  # every fold pairs its covers with the same audio test clips: pairs of one clip are not independent
        groups, groups_are = _audio_clip_of(items["item_id"], fold_dirs), "audio clips (each recurs across folds)"
    pooled = compare_modalities(run_dir / "pooled", items["y"].to_numpy(), stacked[names[0]], stacked[names[1]],
                                stacked[names[-1]], labels, pairing, names[-1], names=(names[0], names[1]),
                                extra_rows={name: stacked[name] for name in names[2:-1]},
                                groups=groups, groups_are=groups_are, seed=seed,
                                item_ids=items["item_id"].to_numpy(),
                                context={"folds": len(fold_dirs), "pooled": "out-of-fold test items of every fold"},
                                notes=[_pooled_note(len(fold_dirs), pairing)])
    per_fold = [{_kind(name): m for name, m in rows.items()} for rows in fold_rows]
    summary = {kind: {metric: {"mean": float(np.mean([f[kind][metric] for f in per_fold])),
                               "std": float(np.std([f[kind][metric] for f in per_fold], ddof=1)),
                               "folds": [f[kind][metric] for f in per_fold]} for metric in HEADLINE}
               for kind in per_fold[0]}
    write_json(run_dir / "folds.json", {"folds": len(fold_dirs), "per_fold_mean_std": summary,
                                        "pooled": {name: {k: m[k] for k in ("n", *HEADLINE, "ci95")}
                                                   for name, m in pooled.items()}})
    lines = [f"# {len(fold_dirs)}-fold cross-validation ({pairing} pairing)", "",
             "| row | " + " | ".join(f"fold {i}" for i in range(len(fold_dirs))) + " | mean ± std (accuracy) |",
             "|---|" + "---|" * (len(fold_dirs) + 1)]
    for kind, values in summary.items():
        accuracy = values["accuracy"]
        lines.append(f"| {kind} | " + " | ".join(f"{a:.3f}" for a in accuracy["folds"])
                     + f" | {accuracy['mean']:.3f} ± {accuracy['std']:.3f} |")
    lines += ["", "Pooled out-of-fold predictions (each item once): see pooled/comparison_pairing-"
              f"{pairing}.md"]
    write_text_atomic(run_dir / "folds.md", "\n".join(lines) + "\n")
    return pooled


def _pooled_note(folds: int, pairing: str) -> str:
    if pairing == "real":
        return f"Pooled over {folds} folds: every item was tested once, by the models of the fold that held it out."
    # Without a paired catalogue only the covers are split into folds; the audio branch keeps its own split.
    return (f"Pooled over {folds} folds of synthetic pairs: each fold pairs the covers it held out with the audio "
            "branch's own test clips of the same genre, so an audio clip recurs across folds and not every cover "
            "is paired; the intervals that resample audio clips are the ones to read.")


def _audio_clip_of(item_ids: pd.Series, fold_dirs: Sequence[Path]) -> np.ndarray:
    """The audio item of each synthetic pair, from the folds' ``pairs_pairing-synthetic.csv``."""
    pairs = pd.concat([pd.read_csv(Path(d) / PAIRS_FILE.format(pairing="synthetic"), dtype=str, keep_default_na=False)
                       for d in fold_dirs], ignore_index=True)
    audio_of = dict(zip(pairs["fused_id"], pairs["audio_item_id"]))
    missing = sorted(set(item_ids) - set(audio_of))
    if missing:
        raise ValueError(f"{len(missing)} pooled pair(s) are not in the folds' pairs files, e.g. {missing[:3]}")
    return item_ids.map(audio_of).to_numpy()


def _kind(row_name: str) -> str:
    """A row's name without the class the majority row names (it can differ between folds) and the pairing."""
    name = row_name.split(" · ")[0]
    return "majority class" if name.startswith("majority class") else name
