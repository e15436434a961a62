"""Label sets: which broad genres a run classifies, and how raw genre names map onto them."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

log = logging.getLogger(__name__)

#: Raw genre name → broad class, applied before a label set filters (the shared covers and GTZAN say hiphop).
DEFAULT_ALIASES: dict[str, str] = {"hiphop": "rap", "hip-hop": "rap", "hip hop": "rap"}


@dataclass(frozen=True)
class LabelSet:
    """Which broad genres a run classifies (in this order) and how raw genre names map onto them."""

    name: str
    classes: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))


#: The one definition of the named label sets; Hydra's ``labels=<name>`` group is generated from it
#: (:func:`engine.config.register_configs`). The reference paper's sets (rap, country, pop / + jazz
#: / + rock), GTZAN's three genres with all their audio here, GTZAN's ten, and the sets of the two
#: real pairings here.
LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (
    LabelSet("paper3", ("rap", "country", "pop")),
    LabelSet("paper4", ("rap", "country", "pop", "jazz")),
    LabelSet("paper5", ("rap", "country", "pop", "jazz", "rock")),
    LabelSet("gtzan3", ("classical", "jazz", "rock")),
    LabelSet("gtzan10", ("blues", "classical", "country", "disco", "rap", "jazz", "metal", "pop", "reggae", "rock")),
    # The shared Spotify-cover albums' genres with more than a handful of tracks (data=spotify_albums).
    LabelSet("rap_country", ("rap", "country")),
    # The classes 35 of the 47 shared real tracks fall in (data=paired_shared) that both training
    # collections have (Discogs covers, GTZAN audio).
    LabelSet("rock_pop_rap_country", ("rock", "pop", "rap", "country")),
)}


def resolve_label_set(spec: str | Sequence[str]) -> list[str]:
    """The classes of a label set by name (see :data:`LABEL_SETS`) or of an explicit list."""
    if isinstance(spec, str):
        if spec not in LABEL_SETS:
            raise ValueError(f"Unknown label set {spec!r}; known: {sorted(LABEL_SETS)} or give a list")
        return list(LABEL_SETS[spec].classes)
    labels = [str(label).strip().lower() for label in spec]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"A label set needs at least two distinct labels, got {list(spec)}")
    return labels


def apply_label_set(
    items: pd.DataFrame,
    labels: Sequence[str],
    aliases: Mapping[str, str] | None = None,
    dedupe_on: str | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Alias raw labels, keep items whose label is in ``labels``, count what was dropped.

    With ``dedupe_on`` (e.g. ``"md5"``), items sharing that key are resolved: copies with the
    same label collapse to one item, and keys carrying two labels of the set (the same cover
    filed under two genres) are dropped as ambiguous, since either label would be half wrong.
    Returns ``(kept_items, counts)`` where counts has ``kept``, ``out_of_set``,
    ``duplicate_copies`` and ``ambiguous_label``.
    """
    aliases = DEFAULT_ALIASES if aliases is None else aliases
    items = items.copy()
    items["label"] = items["label"].map(lambda raw: aliases.get(raw, raw))
    in_set = items["label"].isin(labels)
    counts = {"out_of_set": int((~in_set).sum()), "duplicate_copies": 0, "ambiguous_label": 0}
    items = items[in_set]
    if dedupe_on and dedupe_on in items.columns:
        keyed = items[items[dedupe_on] != ""]
        n_labels = keyed.groupby(dedupe_on)["label"].transform("nunique")
        ambiguous = keyed.index[n_labels > 1]
        counts["ambiguous_label"] = len(ambiguous)
        items = items.drop(index=ambiguous)
        copies = items[dedupe_on].ne("") & items.duplicated(subset=[dedupe_on], keep="first")
        counts["duplicate_copies"] = int(copies.sum())
        items = items[~copies]
    counts["kept"] = len(items)
    log.debug("label set %s: %s", list(labels), counts)  # data.prepare logs the counts with the split
    return items.reset_index(drop=True), counts
