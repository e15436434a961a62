import json

import pandas as pd
import pytest

from data.labels import apply_label_set, resolve_label_set
from data.prepare import prepare_items
from data.splits import SplitSpec, load_or_make_split, make_split, straddling_groups


def test_label_sets_and_aliases(covers_loaded):
    assert resolve_label_set("paper5") == ["rap", "country", "pop", "jazz", "rock"]
    with pytest.raises(ValueError):
        resolve_label_set("paper9")
    items, counts = apply_label_set(covers_loaded.items, resolve_label_set("paper3"))
    assert set(items["label"]) == {"rap", "country", "pop"}
    assert counts["kept"] + counts["out_of_set"] == len(covers_loaded.items)
    assert (items["label"] == "rap").sum() == 899 + 199  # discogs + spotify hiphop


def test_md5_duplicates_collapse_or_drop_as_ambiguous():
    items = pd.DataFrame({
        "item_id": list("abcde"), "label": ["pop", "pop", "rap", "pop", "country"],
        "group": ["g1", "g1", "g2", "g2", "g3"], "md5": ["x", "x", "y", "y", ""],
    })
    kept, counts = apply_label_set(items, ["rap", "pop", "country"], dedupe_on="md5")
    assert kept["item_id"].tolist() == ["a", "e"]
    assert counts == {"out_of_set": 0, "duplicate_copies": 1, "ambiguous_label": 2, "kept": 2}


@pytest.mark.parametrize("label_set", ["paper3", "paper5"])
def test_group_split_has_no_leakage(covers_loaded, label_set):
    items, _ = apply_label_set(covers_loaded.items, resolve_label_set(label_set), dedupe_on="md5")
    split = make_split(items, SplitSpec(protocol="group", seed=3))
    assert straddling_groups(split) == []
    shares = split["split"].value_counts(normalize=True)
    assert 0.15 < shares["test"] < 0.25 and 0.05 < shares["val"] < 0.13
    # Stratified: each class's test share is near the overall one.
    per_class = pd.crosstab(split["label"], split["split"], normalize="index")["test"]
    assert (per_class.sub(shares["test"]).abs() < 0.06).all()


def test_random_split_is_seeded_and_stratified(gtzan30):
    a = make_split(gtzan30.items, SplitSpec(protocol="random", seed=42))
    b = make_split(gtzan30.items, SplitSpec(protocol="random", seed=42))
    c = make_split(gtzan30.items, SplitSpec(protocol="random", seed=7))
    assert a.equals(b) and not a.equals(c)
    assert (a[a["split"] == "test"].groupby("label").size() == 20).all()


def test_segments_split_by_parent_clip(data_root, tmp_path, caplog):
    from data.gtzan import load_gtzan_features

    items = load_gtzan_features(data_root / "gtzan" / "features_3_sec.csv").items
    split = load_or_make_split(items, SplitSpec(protocol="group", seed=1), tmp_path / "s.csv",
                                ["classical", "jazz", "rock"])
    assert straddling_groups(split) == []
    assert split.groupby("group")["item_id"].size().max() == 10
    assert json.loads((tmp_path / "s.json").read_text())["every_item_its_own_group"] is False
    assert "its own group" not in caplog.text


def test_predefined_split(gtzan30, data_root):
    spec = SplitSpec(protocol="predefined", predefined_path=str(data_root / "gtzan/splits/fault_filtered"))
    split = make_split(gtzan30.items, spec)
    assert split["split"].value_counts().to_dict() == {"train": 443, "test": 290, "val": 197}


def test_split_saved_reused_and_guarded(tmp_path, gtzan30, caplog):
    items, _ = apply_label_set(gtzan30.items, ["rap", "country", "pop"])
    path = tmp_path / "s.csv"
    spec = SplitSpec(protocol="group", seed=5)
    first = load_or_make_split(items, spec, path, ["rap", "country", "pop"])
    assert path.is_file() and path.with_suffix(".json").is_file()
    # GTZAN's groups are its clips: a group split of it is said to be no better than a random one.
    assert json.loads(path.with_suffix(".json").read_text())["every_item_its_own_group"] is True
    assert "every item is its own group" in caplog.text
    again = load_or_make_split(items, SplitSpec(protocol="group", seed=99), path, ["rap", "country", "pop"])
    assert again["split"].tolist() == first["split"].tolist()  # saved split wins, not re-made
    with pytest.raises(ValueError, match="other items"):
        load_or_make_split(items.iloc[:-3], spec, path, ["rap", "country", "pop"])


def test_prepare_refuses_label_absent_from_data(tmp_path, gtzan30):
    with pytest.raises(ValueError, match="no items of"):
        prepare_items(gtzan30, ["rap", "country", "electronic"], SplitSpec(), tmp_path / "s.csv")


def test_bad_split_config():
    with pytest.raises(ValueError, match="protocol"):
        SplitSpec(protocol="stratified")
    with pytest.raises(ValueError, match="test_fraction"):
        SplitSpec(test_fraction=1.5)


@pytest.mark.parametrize("label_set,seed", [("paper3", 42), ("paper5", 42), ("paper5", 1), ("paper5", 7)])
def test_group_split_keeps_every_raw_key_on_one_side(covers_loaded, label_set, seed):
    """Checked on the covers table's own columns, not on the code's group: no md5, release, album or artist
    is in two parts."""
    items, _ = apply_label_set(covers_loaded.items, resolve_label_set(label_set), dedupe_on="md5")
    split = make_split(items, SplitSpec(protocol="group", seed=seed))
    parts = split[["item_id", "split"]].merge(items, on="item_id")
    for key in ("md5", "release_id", "album_id", "artist_id"):
        keyed = parts[parts[key] != ""]
        straddling = keyed.groupby(key)["split"].nunique()
        assert (straddling == 1).all(), f"{key} {list(straddling.index[straddling > 1][:3])} straddles"


def test_gtzan_segments_keep_their_parent_clip_on_one_side(data_root):
    from data.gtzan import load_gtzan_features

    items = load_gtzan_features(data_root / "gtzan" / "features_3_sec.csv").items
    split = make_split(items, SplitSpec(protocol="group", seed=4))
    parent = split["item_id"].str.rsplit(".", n=1).str[0]  # the raw name: classical.00000.3 → classical.00000
    assert split.assign(parent=parent).groupby("parent")["split"].nunique().max() == 1


@pytest.mark.parametrize("spec,message", [
    (SplitSpec(protocol="group"), "too few to hold out 10% of them.*split.test_fraction/val_fraction"),
    (SplitSpec(protocol="kfold", folds=11), "too few to make 11 folds.*fewer split.folds"),
])
def test_too_few_items_per_class_for_the_stratified_folds_is_a_clear_error(spec, message):
    # 30 tracks, 10 per class, each its own group: after a 20% test part no class has the 10 items that
    # a 10% validation fold stratifies over (and no class has 11 items for 11 folds).
    items = pd.DataFrame({"item_id": [f"t{i}" for i in range(30)], "label": ["rap", "pop", "country"] * 10,
                          "group": [f"g{i}" for i in range(30)]})
    with pytest.raises(ValueError, match=message):
        make_split(items, spec)
