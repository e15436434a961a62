import shutil

import pandas as pd
import pytest

from data.covers import load_covers_table
from data.gtzan import FEATURE_COLUMNS, load_gtzan_audio, load_gtzan_features, load_predefined_split
from data.items import ITEM_COLUMNS


def test_shared_covers_table(covers_loaded):
    items = covers_loaded.items
    assert list(items.columns[: len(ITEM_COLUMNS)]) == ITEM_COLUMNS
    assert len(items) == 5597 and len(covers_loaded.problems) == 0
    counts = items.groupby(["source", "label"]).size()
    assert counts[("discogs", "country")] == 913 and counts[("spotify", "reggae")] == 45
    assert items["item_id"].is_unique
    assert all(pd.Series(items["cover_path"]).map(lambda p: p.endswith(".jpg")))


def test_covers_groups_tie_shared_md5_and_artist(covers_loaded):
    items = covers_loaded.items
    for key in ("md5", "artist_id"):
        keyed = items[items[key] != ""]
        assert (keyed.groupby(key)["group"].nunique() == 1).all(), key
    # Not vacuous: the shared covers hold the same image under several releases.
    assert items.loc[items["md5"] != "", "md5"].duplicated().any()


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")


def test_covers_csv_relative_to_its_own_folder(tmp_path, covers_loaded):
    source = covers_loaded.items["cover_path"].iloc[:2].tolist()
    (tmp_path / "img").mkdir()
    for i, path in enumerate(source):
        shutil.copy(path, tmp_path / "img" / f"{i}.jpg")
    _write_csv(tmp_path / "mine.csv", ["path", "genre", "artist_id"],
               [["img/0.jpg", "Jazz", "a1"], ["img/1.jpg", "rock", "a1"],
                ["img/missing.jpg", "pop", "a2"], ["img/0.jpg", "pop", "x", "extra-field"], ["", "pop", "a3"]])
    loaded = load_covers_table(tmp_path / "mine.csv")
    assert loaded.items["label"].tolist() == ["jazz", "rock"]
    assert loaded.items["source"].unique().tolist() == ["mine"]
    assert loaded.items["group"].nunique() == 1  # same artist
    assert loaded.items["md5"].str.len().eq(32).all()  # computed when the CSV has none
    reasons = " | ".join(loaded.problems["reason"])
    assert "missing file" in reasons and "malformed row: 4 fields" in reasons and "empty path" in reasons
    assert len(loaded.problems) == 3


def test_covers_csv_without_required_column(tmp_path):
    _write_csv(tmp_path / "bad.csv", ["file", "genre"], [["a.jpg", "pop"]])
    with pytest.raises(ValueError, match="path"):
        load_covers_table(tmp_path / "bad.csv")


def test_gtzan_clip_features(gtzan30):
    items = gtzan30.items
    assert len(items) == 1000 and len(FEATURE_COLUMNS) == 57
    assert items["label"].value_counts().eq(100).all() and items["label"].nunique() == 10
    assert items[FEATURE_COLUMNS].notna().all().all()
    with_audio = items[items["audio_path"] != ""]
    assert with_audio.groupby("label").size()["classical"] == 100
    assert with_audio.groupby("label").size()["hiphop"] == 10


def test_gtzan_segments_keep_parent_clip(data_root):
    loaded = load_gtzan_features(data_root / "gtzan" / "features_3_sec.csv")
    items = loaded.items
    assert len(items) == 2996
    assert set(items["label"]) == {"classical", "jazz", "rock"}
    assert (items["group"] == items["clip_id"]).all()
    assert items["segment"].between(0, 9).all()
    assert items.loc[items["item_id"] == "classical.00000.3", "group"].item() == "classical.00000"


def test_gtzan_malformed_rows_reported(tmp_path, data_root):
    lines = (data_root / "gtzan" / "features_30_sec.csv").read_text().splitlines()[:6]
    fields = lines[2].split(",")
    fields[5] = "not-a-number"
    lines[2] = ",".join(fields)
    lines[3] = lines[3] + ",extra"
    (tmp_path / "f.csv").write_text("\n".join(lines) + "\n")
    loaded = load_gtzan_features(tmp_path / "f.csv")
    assert len(loaded.items) == 3
    assert sorted(loaded.problems["where"]) == ["f.csv:3", "f.csv:4"]


def test_gtzan_audio_and_fault_filtered_split(data_root):
    audio = load_gtzan_audio(data_root / "gtzan" / "audio").items
    per_genre = audio.groupby("label").size()
    assert per_genre["classical"] == 100 and per_genre["jazz"] == 100 and per_genre["blues"] == 10
    assert audio.loc[audio["item_id"] == "jazz.00054", "audio_path"].item().endswith(".wav")
    split = load_predefined_split(data_root / "gtzan" / "splits" / "fault_filtered")
    assert split["split"].value_counts().to_dict() == {"train": 443, "test": 290, "val": 197}



def _parquet_and_csv_catalogues(folder):
    """The same four tracks as Parquet, in its natural types (ids as floats with a gap, artists as a list),
    and as the CSV a spreadsheet would write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "track_id": pa.array([1.0, 2.0, 3.0, None]),
        "genre": [" Rock", "pop", "rock", "pop"],
        "artist_ids": pa.array([["a", "b"], ["b"], ["c"], ["d"]]),
        "danceability": pa.array([0.5, None, 0.25, 1.0]),
    }), folder / "tracks.parquet")
    (folder / "tracks.csv").write_text("track_id,genre,artist_ids,danceability\n"
                                       "1, Rock,a;b,0.5\n2,pop,b,\n3,rock,c,0.25\n,pop,d,1.0\n")


def test_a_parquet_catalogue_loads_as_its_csv_twin(tmp_path):
    """Ids stored as numbers read as in a CSV, a list of artists groups like "a;b": tracks 1 and 2 share
    artist b, so one group, or the split could put that artist on both sides."""
    from data.paired import load_paired_catalogue

    _parquet_and_csv_catalogues(tmp_path)
    from_parquet = load_paired_catalogue(tmp_path / "tracks.parquet", source="tracks")
    from_csv = load_paired_catalogue(tmp_path / "tracks.csv", source="tracks")
    pd.testing.assert_frame_equal(from_parquet.items, from_csv.items, check_dtype=False)
    items = from_parquet.items.set_index("item_id")
    assert items.index.tolist() == ["1", "2", "3"] and items.loc["1", "label"] == "rock"
    assert items.loc["1", "group"] == items.loc["2", "group"] != items.loc["3", "group"]
    assert from_parquet.problems["reason"].tolist() == ["no track_id"]


def test_a_parquet_column_without_a_text_form_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.paired import load_paired_catalogue

    pq.write_table(pa.table({"track_id": ["t1"], "genre": ["rock"], "release": pa.array([{"year": 1999}])}),
                   tmp_path / "tracks.parquet")
    with pytest.raises(ValueError, match=r"column 'release' of type struct<year: int64> has no text form"):
        load_paired_catalogue(tmp_path / "tracks.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet is not a readable Parquet file"):
        load_paired_catalogue(tmp_path / "broken.parquet")


def test_one_reader_drops_bad_records_for_item_tables_and_keeps_them_for_track_tables(tmp_path):
    """The same file read by both modes of the one delimited reader: the same records in error, the same reasons."""
    from data.items import delimited_records, read_delimited
    from scoring.tables import read_track_table

    path = tmp_path / "table.csv"
    path.write_bytes("\ufefftrack_id,audio_path\nt1,a.ogg\n,\nt3,b.ogg,extra\nt4,c.ogg\n".encode("utf-8"))
    header, records = delimited_records(path)
    assert header == ["track_id", "audio_path"]  # the byte-order mark is not part of the first name
    assert [error for _, _, error in records] == ["", "empty row", "malformed row: 3 fields, expected 2", ""]
    _, rows, problems = read_delimited(path)
    assert rows == [["t1", "a.ogg"], ["t4", "c.ogg"]]
    assert problems == [{"where": "table.csv:4", "item_id": "", "reason": "malformed row: 3 fields, expected 2"}]
    table, _ = read_track_table(path)
    assert table["row"].tolist() == [0, 1, 2, 3]
    assert table["row_error"].tolist() == [error for _, _, error in records]


def test_a_run_loads_each_item_table_once_and_hands_out_copies(tmp_path, covers_loaded):
    from omegaconf import OmegaConf

    from data.config import load_items, tables_loaded_once

    source = covers_loaded.items["cover_path"].iloc[:2].tolist()
    (tmp_path / "img").mkdir()
    for i, path in enumerate(source):
        shutil.copy(path, tmp_path / "img" / f"{i}.jpg")
    table = tmp_path / "mine.csv"
    _write_csv(table, ["path", "genre"], [["img/0.jpg", "jazz"], ["img/1.jpg", "rock"]])
    loader = OmegaConf.create({"_target_": "data.covers.load_covers_table", "csv_path": str(table)})
    other = OmegaConf.create({"_target_": "data.covers.load_covers_table", "csv_path": str(table), "sources": None,
                              "base_dir": str(tmp_path)})
    with tables_loaded_once():
        first = load_items(loader)
        first.items.loc[:, "label"] = "changed by its caller"
        _write_csv(table, ["path", "genre"], [["img/0.jpg", "pop"]])
        # The same loader again: the table the block loaded first, unchanged by the first caller.
        assert load_items(loader).items["label"].tolist() == ["jazz", "rock"]
        assert load_items(other).items["label"].tolist() == ["pop"]  # another loader config loads anew
    assert load_items(loader).items["label"].tolist() == ["pop"]  # outside a block every call loads
