"""The one split definition: seeded, stratified, group-aware by default, saved and reused."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from engine.io import atomic_path, write_json

log = logging.getLogger(__name__)

PROTOCOLS = ("group", "random", "predefined", "kfold")
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """How to split.

    ``group``: stratified, items of one ``group`` (md5 / release / artist / parent clip) never
    straddle train/val/test. ``random``: the reference paper's plain stratified split, ignoring
    groups. ``predefined``: an external item → split table (GTZAN fault-filtered), joined on
    ``predefined_key``. ``test_fraction`` is of all items; ``val_fraction`` of what remains.
    ``kfold``: ``folds`` stratified group folds; a run uses fold ``fold`` as its test part and a
    group fold of the rest (``val_fraction``) for validation, so every item is tested exactly once
    over the folds.
    """

    protocol: str = "group"
    seed: int = 42
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    predefined_path: str | None = None
    predefined_key: str = "clip_id"
    folds: int = 5
    fold: int | None = None
    #: Split only the items that another saved split puts in ``within_part`` of ``within_column``
    #: (the inner folds of cross-fitting, over the training part of the run's split).
    within_path: str | None = None
    within_column: str = "split"
    within_part: str = "train"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"split protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "predefined" and not self.predefined_path:
            raise ValueError("split protocol 'predefined' needs predefined_path")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.protocol == "kfold" and self.folds < 2:
            raise ValueError(f"split.folds must be at least 2, got {self.folds}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ValueError(f"split.fold must be in 0…{self.folds - 1}, got {self.fold}")

    @property
    def column(self) -> str:
        """The column of the saved split table that holds this run's train/val/test parts."""
        if self.protocol != "kfold":
            return "split"
        if self.fold is None:
            raise ValueError("split=kfold runs fold by fold: set split.fold (scripts/run.py does, for every fold)")
        return f"split_{self.fold}"


def _check_some_class_fills_the_folds(labels: np.ndarray, n_splits: int, task: str, fix: str) -> None:
    """Stratified folds need a class with at least ``n_splits`` items (scikit-learn's own error names no fix)."""
    names, counts = np.unique(labels, return_counts=True)
    if counts.max() < n_splits:
        per_class = ", ".join(f"{name} {count}" for name, count in zip(names, counts))
        raise ValueError(f"{len(labels)} items ({per_class}) are too few to {task}: that takes {n_splits} stratified "
                         f"folds, and every class has fewer items; {fix}")


def _group_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one stratified group fold holding about ``fraction`` of the items."""
    n_splits = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} group(s) are too few to hold out {fraction:.0%} of them (at least {n_splits} "
                         "are needed): use more data, a larger fraction, or split=random")
    _check_some_class_fills_the_folds(labels, n_splits, f"hold out {fraction:.0%} of them",
                                      "use more data, a larger split.test_fraction/val_fraction, or split=random")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def _kfold(base: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """``fold`` (the fold an item is tested in) and, per fold f, ``split_f`` (train/val/test of that run)."""
    labels, groups = base["label"].to_numpy(), base["group"].to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < spec.folds:
        raise ValueError(f"{n_groups} group(s) are too few for {spec.folds} folds: use fewer folds or more data")
    _check_some_class_fills_the_folds(labels, spec.folds, f"make {spec.folds} folds",
                                      "use fewer split.folds or more data")
    folds = StratifiedGroupKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
    fold_of = np.empty(len(base), dtype=int)
    for fold, (_, tested) in enumerate(folds.split(np.zeros(len(base)), labels, groups)):
        fold_of[tested] = fold
    base["fold"] = fold_of
    for fold in range(spec.folds):
        rest = np.flatnonzero(fold_of != fold)
        val = np.zeros(len(base), dtype=bool)
        val[rest[_group_fold(labels[rest], groups[rest], spec.val_fraction, spec.seed + 1 + fold)]] = True
        base[f"split_{fold}"] = np.where(fold_of == fold, "test", np.where(val, "val", "train"))
    return base


def make_split(items: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """Assign every item to ``train``, ``val`` or ``test``.

    Returns columns ``item_id, label, group, split``. Items absent from a predefined split
    table are left out (and logged).
    """
    base = items[["item_id", "label", "group"]].reset_index(drop=True).copy()
    labels, groups = base["label"].to_numpy(), base["group"].to_numpy()
    if spec.protocol == "predefined":
        from data.gtzan import load_predefined_split

        table = load_predefined_split(spec.predefined_path)
        keys = items[spec.predefined_key].reset_index(drop=True)
        lookup = dict(zip(table["clip_id"], table["split"]))
        base["split"] = keys.map(lookup)
        missing = base["split"].isna()
        if missing.any():
            log.info("predefined split: %d items not listed, left out", int(missing.sum()))
        return base[~missing].reset_index(drop=True)
    if spec.protocol == "kfold":
        return _kfold(base, spec)
    if spec.protocol == "group":
        test = _group_fold(labels, groups, spec.test_fraction, spec.seed)
        rest = np.flatnonzero(~test)
        val = np.zeros(len(base), dtype=bool)
        val[rest[_group_fold(labels[rest], groups[rest], spec.val_fraction, spec.seed + 1)]] = True
    else:
        index = np.arange(len(base))
        train_val, test_index = train_test_split(
            index, test_size=spec.test_fraction, stratify=labels, random_state=spec.seed
        )
        _, val_index = train_test_split(
            train_val, test_size=spec.val_fraction, stratify=labels[train_val], random_state=spec.seed
        )
        test = np.isin(index, test_index)
        val = np.isin(index, val_index)
    base["split"] = np.where(test, "test", np.where(val, "val", "train"))
    return base


def straddling_groups(split: pd.DataFrame, column: str = "split") -> list[str]:
    """Groups whose items fall in more than one part of ``column`` (empty for a leak-free split)."""
    per_group = split.groupby("group")[column].nunique()
    return sorted(per_group.index[per_group > 1])


def split_columns(split: pd.DataFrame) -> list[str]:
    """The part columns of a saved split table: ``split``, or ``fold`` and ``split_0``… for k folds."""
    return [c for c in split.columns if c == "split" or c == "fold" or c.startswith("split_")]


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Items per label (rows) and split part (columns)."""
    return pd.crosstab(split["label"], split["split"]).reindex(columns=list(SPLIT_NAMES), fill_value=0)


def load_or_make_split(items: pd.DataFrame, spec: SplitSpec, path: str | Path, label_set: list[str]) -> pd.DataFrame:
    """Reuse the split saved at ``path`` or make it and save it (CSV + ``.json`` description).

    A saved split whose items differ from ``items`` is an error: silently re-splitting would
    make runs that share the split name incomparable.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if path.is_file():
        split = pd.read_csv(path, dtype=str, keep_default_na=False)
        expected = set(items["item_id"])
        if spec.protocol == "predefined":
            ok = set(split["item_id"]) <= expected
        else:
            ok = set(split["item_id"]) == expected
        if not ok:
            raise ValueError(
                f"The saved split {path} lists other items than this data gives (the data or "
                "its loading changed). Delete it to make a new split, or set split.name to "
                "another name."
            )
        log.debug("reusing split %s", path)  # data.prepare names the split it uses
        return split
    split = make_split(items, spec)
    singletons = bool(split["group"].is_unique)
    if singletons and spec.protocol in ("group", "kfold"):
        log.warning("every item is its own group (no two items share an md5, release, album or artist id): the %s "
                    "split at %s keeps no more apart than a random one, so one artist can sit on both sides "
                    "(GTZAN's artist-filtered split: split=fault_filtered)", spec.protocol, path)
    if spec.protocol != "random":
        for column in split_columns(split):
            leaks = straddling_groups(split, column)
            if leaks:
                raise AssertionError(f"group split leaks {len(leaks)} groups in {column}, e.g. {leaks[:3]}")
    with atomic_path(path) as temporary:
        split.to_csv(temporary, index=False)
    first = "split" if "split" in split.columns else "split_0"
    meta = {
        **{k: v for k, v in asdict(spec).items() if k != "fold"},
        "label_set": list(label_set),
        "counts": split_counts(split.rename(columns={first: "split"})).to_dict(orient="index"),
        "straddling_groups": len(straddling_groups(split, first)),
        "every_item_its_own_group": singletons,
    }
    write_json(meta_path, meta)
    log.info("saved split %s", path)
    return split
