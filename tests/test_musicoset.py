import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from acquire.musicoset import build_musicoset_items
from data.musicoset import artist_votes, label_album, load_musicoset_tables, read_tsv_repairing

ROOT = Path(__file__).resolve().parent.parent
A = {"rapper1": "A" * 22, "rapper2": "B" * 22, "duo": "C" * 22, "nomap": "D" * 22}
GENRES = {"drill": "rap", "gangster rap": "rap", "classic texas country": "country", "dance pop": "pop"}


def _tables(root: Path) -> None:
    meta = root / "musicoset_metadata"
    meta.mkdir(parents=True)
    header = "artist_id\tname\tfollowers\tpopularity\tartist_type\tmain_genre\tgenres\timage_url"
    (meta / "artists.csv").write_text("\r\n".join([
        header,
        f"{A['rapper1']}\tRoyce Da 5'9\"\t1\t1\trapper\tdrill\t['drill', 'gangster rap', 'dance pop']\t-",
        # broken over two lines inside the name
        f"{A['rapper2']}\tLil\nBroken\t1\t1\trapper\tdrill\t['drill']\t-",
        # a tie pop/country, broken by main_genre (dance pop → pop)
        f"{A['duo']}\t\"Quoted Duo\"\t1\t1\tduo\tdance pop\t['classic texas country', 'dance pop']\t-",
        f"{A['nomap']}\tNobody\t1\t1\tsinger\t-\t['mellow gold']\t-",
        "EEEEEEEEEEEEEEEEEEEEEE\ttoo\tmany\tfields\there\t1\t2\t3\t4",
        "",
    ]))
    (meta / "releases.csv").write_text("\n".join([
        "artist_id\talbum_id\trelease_date\trelease_date_precision",
        f"{A['rapper1']}\t{'1' * 22}\t2018-01-01\tday",
        f"{A['rapper2']}\t{'2' * 22}\t2018-01-01\tday",
        f"{A['duo']}\t{'3' * 22}\t2018-01-01\tday",
        f"{A['nomap']}\t{'4' * 22}\t2018-01-01\tday",
        f"{'Z' * 22}\t{'5' * 22}\t2018-01-01\tday",
        f"{A['rapper1']}\tshort-id\t2018\tyear",
    ]) + "\n")
    (meta / "songs.csv").write_text("\n".join([
        "song_id\tsong_name\tbillboard\tartists\tpopularity\texplicit\tsong_type",
        f"{'s' * 22}\tHit\t('Hit', 'x')\t{{}}\t90\tTrue\tSolo",
        f"{'t' * 22}\tB-side\t('B', 'x')\t{{}}\t10\tTrue\tSolo",
    ]) + "\n")
    (meta / "tracks.csv").write_text("\n".join([
        "song_id\talbum_id\ttrack_number\trelease_date\trelease_date_precision",
        f"{'t' * 22}\t{'1' * 22}\t2\t2018\tyear",
        f"{'s' * 22}\t{'1' * 22}\t1\t2018\tyear",
    ]) + "\n")


def test_broken_rows_are_repaired_or_dropped_and_counted(tmp_path):
    _tables(tmp_path)
    read = read_tsv_repairing(tmp_path / "musicoset_metadata" / "artists.csv")
    assert list(read.frame["name"]) == ["Royce Da 5'9\"", "Lil Broken", "Quoted Duo", "Nobody"]
    assert [r["reason"] for r in read.repaired] == ["row broken over 2 lines, joined", "quoted cell unquoted"]
    assert len(read.dropped) == 1 and read.dropped[0]["where"] == "artists.csv:7"


def test_albums_are_labelled_by_the_stated_rule(tmp_path):
    _tables(tmp_path)
    build = build_musicoset_items(tmp_path, GENRES)
    items = build.items.set_index("album_id")
    assert items.loc["1" * 22, "label"] == "rap" and items.loc["1" * 22, "label_share"] == round(2 / 3, 4)
    assert items.loc["1" * 22, "track_title"] == "Hit"  # the album's most popular song
    assert items.loc["2" * 22, "group"] == A["rapper2"]
    assert items.loc["3" * 22, "label"] == "pop" and "broken by main_genre" in items.loc["3" * 22, "label_note"]
    unlabelled = dict(zip(build.unlabelled["album_id"], build.unlabelled["reason"]))
    assert unlabelled == {"4" * 22: "no mapped genre", "5" * 22: "artist not in artists.csv"}
    reasons = build.problems["reason"].tolist()
    assert "malformed Spotify id" in reasons and sum(r.startswith("malformed row") for r in reasons) == 1
    assert build.unmapped_genres.to_dict(orient="records") == [{"genre": "mellow gold", "artists": 1, "albums": 1}]
    assert (build.items["cover_url"] == "").all()  # no albums.csv: the crawler asks Spotify by album id


def test_cover_urls_come_from_albums_table_when_it_is_there(tmp_path):
    _tables(tmp_path)
    url = "https://i.scdn.co/image/ab67616d0000b273" + "0" * 24
    (tmp_path / "musicoset_metadata" / "albums.csv").write_text("\n".join([
        "album_id\tname\tbillboard\tartists\tpopularity\ttotal_tracks\talbum_type\timage_url",
        f"{'1' * 22}\tFirst\t('First', 'x')\t{{}}\t50\t10\talbum\t{url}",
    ]) + "\n")
    items = build_musicoset_items(tmp_path, GENRES).items.set_index("album_id")
    assert items.loc["1" * 22, "cover_url"] == url and items.loc["3" * 22, "cover_url"] == ""


def test_tie_without_main_genre_leaves_the_album_unlabelled():
    votes = [artist_votes(["drill", "classic texas country"], GENRES)]
    assert label_album(votes, None) == ("", 0.5, "tie between country/rap")
    assert label_album([artist_votes(["drill"], GENRES), artist_votes(["dance pop"], GENRES)], "pop")[0] == "pop"


@pytest.mark.slow
def test_shared_musicoset_build(data_root, tmp_path):
    tables, problems = load_musicoset_tables(data_root / "musicoset")
    assert len(tables["artists"]) == 11518 and len(tables["songs"]) == 20405 and len(problems) == 0
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_musicoset.py"), "--data-root", str(data_root),
                    "--out", str(tmp_path)], check=True, capture_output=True)
    report = json.loads((tmp_path / "build_report.json").read_text())
    items = pd.read_csv(tmp_path / "items.csv", dtype=str, keep_default_na=False)
    assert items["item_id"].is_unique and len(items) == report["albums_labelled"]
    assert all(n > 500 for n in report["label_sets"]["paper5"].values())
    unmapped = pd.read_csv(tmp_path / "unmapped_genres.csv")
    assert "mellow gold" in set(unmapped["genre"]) and "drill" not in set(unmapped["genre"])
    assert unmapped["albums"].is_monotonic_decreasing


def test_a_catalogue_labelled_by_rule_gets_musicosets_album_labels(tmp_path):
    """Tracks whose artists are those of a MusicOSet album get that album's label, share and note."""
    from data.paired import load_paired_catalogue

    _tables(tmp_path)
    albums = build_musicoset_items(tmp_path, GENRES).items
    genre_map = tmp_path / "genre_map.csv"
    pd.DataFrame({"genre": list(GENRES), "broad_genre": list(GENRES.values())}).to_csv(genre_map, index=False)
    catalogue = pd.DataFrame({"track_id": [f"t{i}" for i in range(len(albums))] + ["nobody", "unknown"],
                              "artist_ids": [ids.replace("|", ";") for ids in albums["artist_ids"]]
                              + [A["nomap"], "Z" * 22]})
    catalogue.to_csv(tmp_path / "tracks.csv", index=False)
    loaded = load_paired_catalogue(tmp_path / "tracks.csv", label_rule="musicoset", musicoset_root=tmp_path,
                                   genre_map_path=genre_map)
    labelled = loaded.items.set_index("item_id")
    for i, album in enumerate(albums.itertuples()):
        track = labelled.loc[f"t{i}"]
        assert (track["label"], track["label_share"], track["label_note"]) == (album.label, album.label_share,
                                                                               album.label_note)
    reasons = dict(zip(loaded.problems["item_id"], loaded.problems["reason"]))
    assert reasons == {"nobody": "no label: no mapped genre", "unknown": "no label: artist not in artists.csv"}
