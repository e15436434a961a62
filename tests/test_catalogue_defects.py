"""Catalogue defects that would leak a split or mislabel a track are kept apart, fixed or listed, never silent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.labels import apply_label_set, normalise_genre
from data.paired import load_paired_catalogue
from data.prepare import prepare_items
from data.splits import SplitSpec


def _cover(path: Path, seed: int) -> str:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return path.name


def _sides(prepared, column: str) -> dict[str, set[str]]:
    """Which split parts each value of ``column`` (ids split on ;) sits in."""
    sides: dict[str, set[str]] = {}
    for cell, part in zip(prepared.items[column], prepared.items["split"]):
        for value in str(cell).split(";"):
            if value:
                sides.setdefault(value, set()).add(part)
    return sides


def test_a_null_inside_a_parquet_list_keeps_the_other_ids_and_is_listed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "tracks.parquet"
    pq.write_table(pa.table({"track_id": ["t1", "t2"], "genre": ["rap", "rap"],
                             "artist_ids": pa.array([["A", None], ["A"]])}), path)
    loaded = load_paired_catalogue(path)
    items = loaded.items.set_index("item_id")
    assert items.loc["t1", "artist_ids"] == "A"
    assert items.loc["t1", "group"] == items.loc["t2", "group"]  # the shared artist still ties them
    assert loaded.problems["reason"].str.contains("null inside the list").sum() == 1


def _catalogue(tmp_path: Path) -> Path:
    """40 tracks of 2 genres (each its own album and artist); 8 pairs share a cover file byte for byte,
    4 of them under two genres; artists shared across rows; genre cells spelled every which way."""
    rows = []
    for i in range(40):
        genre = ["rap", "country"][i % 2]
        rows.append({"track_id": f"t{i}", "genre": genre, "album_id": f"al{i}", "artist_ids": f"ar{i}",
                     "cover_path": _cover(tmp_path / f"c{i}.png", i)})
    for k, (a, b) in enumerate([(0, 1), (2, 3), (4, 5), (6, 7), (8, 10), (12, 14), (9, 11), (13, 15)]):
        rows[b]["cover_path"] = rows[a]["cover_path"]  # (0, 1) … (6, 7): rap and country; the rest: one genre
    rows[20]["artist_ids"] = "ar21;ar22"  # shared artists
    rows[23]["artist_ids"] = "ar22"
    rows[24]["genre"] = "Rap\u200b"        # zero-width space
    rows[25]["genre"] = " Country  \t"    # runs of white space
    rows[26]["genre"] = "hip\u00a0 hop"    # no-break space, two spaces → an alias of rap
    rows[27]["genre"] = "ｒａｐ"            # full-width letters (NFKC)
    rows[28]["genre"] = "polka"           # outside the label set
    rows.append({**rows[30], "genre": "country"})  # t30 repeated with another genre
    rows.append({**rows[31]})                     # t31 repeated, same genre
    path = tmp_path / "tracks.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_identical_covers_are_one_group_and_an_md5_under_two_genres_is_dropped_and_listed(tmp_path):
    loaded = load_paired_catalogue(_catalogue(tmp_path))
    prepared = prepare_items(loaded, ["rap", "country"], SplitSpec(protocol="group", seed=0, test_fraction=0.3,
                                                                   val_fraction=0.2), tmp_path / "split.csv",
                             ambiguous_on="md5")
    kept = set(prepared.items["item_id"])
    assert not {"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"} & kept  # one image, two genres: either is half wrong
    assert {"t8", "t10", "t12", "t14", "t9", "t11", "t13", "t15"} <= kept  # one image, one genre: kept, grouped
    for value, parts in {**_sides(prepared, "md5"), **_sides(prepared, "artist_ids")}.items():
        assert len(parts) == 1, (value, parts)
    reasons = prepared.problems.set_index("item_id")["reason"]
    for track in ("t0", "t1", "t7"):
        assert "filed under 2 genres (country, rap): dropped as ambiguous" in reasons[track]
    assert "'polka' is outside the label set" in reasons["t28"]
    assert "repeated with another genre ('country'; the first row, kept, says 'rap')" in reasons["t30"]
    assert reasons["t31"] == "track_id repeated (the first row is kept)"
    labels = prepared.items.set_index("item_id")["label"]
    assert [labels[t] for t in ("t24", "t25", "t26", "t27")] == ["rap", "country", "rap", "rap"]


@pytest.mark.parametrize("raw, expected", [("Rap ", "rap"), ("RAP", "rap"), ("hip\u00a0hop", "hip hop"),
                                           ("hip  hop\t", "hip hop"), ("\u200bjazz\ufeff", "jazz"),
                                           ("ｃｏｕｎｔｒｙ", "country"), (None, "")])
def test_genre_cells_are_normalised_before_aliasing(raw, expected):
    assert normalise_genre(raw) == expected


def test_rows_the_label_set_drops_are_listed_by_row():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "label": ["rap", "polka", "hip hop\u200b"]})
    listed: list[dict] = []
    kept, counts = apply_label_set(items, ["rap", "country"], problems=listed)
    assert kept["item_id"].tolist() == ["a", "c"] and counts["out_of_set"] == 1
    assert listed == [{"where": "label set", "item_id": "b",
                       "reason": "label 'polka' is outside the label set ['rap', 'country']"}]
