"""Item table → label set → saved split: the one path every branch and fusion take to their data."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data.items import LoadResult, problems_frame
from data.labels import apply_label_set
from data.splits import SplitSpec, load_or_make_split, split_counts

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Items of one label set with their split part (column ``split``) and class index (``y``)."""

    items: pd.DataFrame
    labels: list[str]
    split_path: Path
    spec: SplitSpec
    counts: dict[str, Any] = field(default_factory=dict)
    problems: pd.DataFrame | None = None
    #: The data's name (its config's ``name``) and loader (``_target_`` + arguments), for titles, model
    #: cards and anything that reloads the same items later (scripts/explain.py).
    name: str = ""
    loader: dict[str, Any] = field(default_factory=dict)

    def part(self, name: str) -> pd.DataFrame:
        return self.items[self.items["split"] == name]

    def describe(self) -> dict[str, Any]:
        """JSON-ready account of the data for metrics and model cards."""
        return {
            "labels": self.labels, "split_file": str(self.split_path), "split_column": self.spec.column,
            "protocol": self.spec.protocol,
            "split_seed": self.spec.seed, "label_filter": self.counts,
            "load_problems": 0 if self.problems is None else len(self.problems),
            "split_counts": split_counts(self.items).to_dict(orient="index"),
            "data_loader": self.loader,
        }


def prepare_items(
    loaded: LoadResult,
    labels: Sequence[str],
    spec: SplitSpec,
    split_path: str | Path,
    aliases: Mapping[str, str] | None = None,
    dedupe_on: str | None = None,
    ambiguous_on: str | None = None,
) -> PreparedData:
    """Apply the label set, then load or make the split saved at ``split_path`` and attach it.

    ``problems`` of the result lists the loader's problems and every item the label set dropped."""
    dropped: list[dict] = []
    items, counts = apply_label_set(loaded.items, labels, aliases=aliases, dedupe_on=dedupe_on,
                                    ambiguous_on=ambiguous_on, problems=dropped)
    if items.empty:
        raise ValueError(f"No items left after the label set {list(labels)}: check labels/aliases against the data")
    missing = sorted(set(labels) - set(items["label"]))
    if missing:
        raise ValueError(f"The data has no items of {missing} (label set {list(labels)}); choose another set")
    if spec.within_path:
        outer = pd.read_csv(spec.within_path, dtype=str, keep_default_na=False)
        inside = set(outer.loc[outer[spec.within_column] == spec.within_part, "item_id"])
        items = items[items["item_id"].isin(inside)].reset_index(drop=True)
    split = load_or_make_split(items, spec, split_path, list(labels))
    parts = split[["item_id", spec.column]].rename(columns={spec.column: "split"})
    items = items.merge(parts, on="item_id", how="inner")
    items["y"] = items["label"].map({label: i for i, label in enumerate(labels)})
    log.info("%d items of %s, %d dropped outside the label set, %d duplicate copies, %d ambiguous; split %s (%s)",
             len(items), list(labels), counts["out_of_set"], counts["duplicate_copies"], counts["ambiguous_label"],
             split_path, spec.protocol)
    return PreparedData(items=items, labels=list(labels), split_path=Path(split_path), spec=spec,
                        counts=counts, problems=pd.concat([loaded.problems, problems_frame(dropped)],
                                                          ignore_index=True))
