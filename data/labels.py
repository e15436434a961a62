"""Label sets: which broad genres a run classifies, and how raw genre names map onto them."""
from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

log = logging.getLogger(__name__)

#: Raw genre name → broad class, applied before a label set filters (the shared covers and GTZAN say hiphop).
DEFAULT_ALIASES: dict[str, str] = {"hiphop": "rap", "hip-hop": "rap", "hip hop": "rap"}


#: Characters that show as nothing (zero-width space, joiners, word joiner, byte-order mark).
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"\s+")


def normalise_genre(raw: object) -> str:
    """A genre cell as one spelling: Unicode NFKC, invisible characters removed, each run of white space
    (tabs, no-break spaces) one space, trimmed, lower case. ``"Hip\u00a0 Hop\u200b"`` → ``"hip hop"``."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", "" if raw is None else str(raw)))
    return _SPACES.sub(" ", text).strip().lower()


@dataclass(frozen=True)
class LabelSet:
    """Which broad genres a run classifies (in this order) and how raw genre names map onto them."""

    name: str
    classes: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))


#: The one definition of the named label sets; Hydra's ``labels=<name>`` group is generated from it
#: (:func:`data.config.register_configs`). The reference paper's sets (rap, country, pop / + jazz
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
    ambiguous_on: str | None = None,
    problems: list[dict] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Normalise (:func:`normalise_genre`) and alias raw labels, keep items whose label is in ``labels``,
    count what was dropped.

    With ``dedupe_on`` (e.g. ``"md5"``), items sharing that key are resolved: copies with the
    same label collapse to one item, and keys carrying two labels of the set (the same cover
    filed under two genres) are dropped as ambiguous, since either label would be half wrong.
    ``ambiguous_on`` drops such keys too but keeps copies with one label apart (a paired catalogue's
    tracks of one album share a cover and stay tracks). ``problems``, when given, gets one entry per
    dropped item with its reason. Returns ``(kept_items, counts)`` where counts has ``kept``,
    ``out_of_set``, ``duplicate_copies`` and ``ambiguous_label``.
    """
    aliases = DEFAULT_ALIASES if aliases is None else aliases
    listed = problems if problems is not None else []
    items = items.copy()
    items["label"] = items["label"].map(lambda raw: aliases.get(normalise_genre(raw), normalise_genre(raw)))
    in_set = items["label"].isin(labels)
    listed += [{"where": "label set", "item_id": item_id, "reason": f"label {label!r} is outside the label set "
                f"{list(labels)}"} for item_id, label in zip(items.loc[~in_set, "item_id"], items.loc[~in_set, "label"])]
    counts = {"out_of_set": int((~in_set).sum()), "duplicate_copies": 0, "ambiguous_label": 0}
    items = items[in_set]
    key = dedupe_on or ambiguous_on
    if key and key in items.columns:
        keyed = items[items[key] != ""]
        labels_of_key = keyed.groupby(key)["label"].agg(lambda values: sorted(set(values)))
        ambiguous = keyed.index[keyed[key].map(labels_of_key).map(len) > 1]
        listed += [{"where": "label set", "item_id": items.at[i, "item_id"],
                    "reason": f"{key} {items.at[i, key]} is filed under {len(labels_of_key[items.at[i, key]])} "
                              f"genres ({', '.join(labels_of_key[items.at[i, key]])}): dropped as ambiguous"}
                   for i in ambiguous]
        counts["ambiguous_label"] = len(ambiguous)
        items = items.drop(index=ambiguous)
        if dedupe_on:
            copies = items[dedupe_on].ne("") & items.duplicated(subset=[dedupe_on], keep="first")
            counts["duplicate_copies"] = int(copies.sum())
            items = items[~copies]
    counts["kept"] = len(items)
    log.debug("label set %s: %s", list(labels), counts)  # data.prepare logs the counts with the split
    return items.reset_index(drop=True), counts
