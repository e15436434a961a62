"""A paired catalogue end to end: one table in, image-only vs. audio-only vs. fused on the same tracks out.

The catalogue pairs real shared covers with real GTZAN clips (3 genres; not real pairs, but the
path is the same), with broken rows of every kind and some files given only as URLs served on
127.0.0.1.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import closed_port

ROOT = Path(__file__).resolve().parent.parent
GENRES = {"classical": "spotify", "jazz": "spotify", "rock": "discogs"}
ARTISTS_PER_GENRE, TRACKS_PER_ALBUM = 5, 3


def _sources(covers_loaded, data_root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    covers = covers_loaded.items.drop_duplicates("md5")
    cover = {g: covers[(covers["label"] == g) & (covers["source"] == s)]["cover_path"].tolist()[:10]
             for g, s in GENRES.items()}
    audio = {g: [str(p) for p in sorted((data_root / "gtzan" / "audio" / g).glob("*.ogg"))[:20]] for g in GENRES}
    return cover, audio


def _catalogue(folder: Path, covers_loaded, data_root: Path, server_url: str) -> tuple[Path, dict[str, str]]:
    """45 regular tracks (5 artists × 1 album × 3 tracks per genre; an album's tracks share its cover) and
    one special row per kind of trouble, each its own album and artist. Returns (CSV, served path → file)."""
    cover, audio = _sources(covers_loaded, data_root)
    rows = []
    for genre in GENRES:
        for a in range(ARTISTS_PER_GENRE):
            for t in range(TRACKS_PER_ALBUM):
                rows.append({"track_id": f"{genre}-{a}-{t}", "genre": genre, "album_id": f"album-{genre}-{a}",
                             "artist_ids": f"artist-{genre}-{a}", "cover_path": cover[genre][a],
                             "audio_path": audio[genre][a * TRACKS_PER_ALBUM + t]})
    (folder / "not_an_image.jpg").write_text("not an image")
    (folder / "broken.mp3").write_bytes(b"ID3" + bytes(range(256)) * 8)
    refused = f"http://127.0.0.1:{closed_port()}/preview.mp3"
    served = {"/cover.jpg": cover["jazz"][8], "/clip.ogg": audio["jazz"][18]}
    specials = {
        "nolabel": {"genre": "", "cover_path": cover["rock"][6], "audio_path": audio["rock"][16]},
        "deadcover": {"genre": "rock", "cover_url": f"{server_url}/absent.jpg", "audio_path": audio["rock"][17]},
        "refusedaudio": {"genre": "jazz", "cover_path": cover["jazz"][6], "audio_url": refused},
        "badmp3": {"genre": "classical", "cover_path": cover["classical"][6], "audio_path": "broken.mp3"},
        "notimage": {"genre": "classical", "cover_path": "not_an_image.jpg", "audio_path": audio["classical"][16]},
        "coveronly": {"genre": "rock", "cover_path": cover["rock"][7], "audio_path": ""},
        "urls": {"genre": "jazz", "cover_url": f"{server_url}/cover.jpg", "audio_url": f"{server_url}/clip.ogg"},
    }
    for name, row in specials.items():
        rows.append({"track_id": name, "album_id": f"album-{name}", "artist_ids": f"artist-{name};artist-guest",
                     **row})
    rows[-1]["artist_ids"] = "artist-urls"  # the guest ties every special row but this one into one group
    path = folder / "tracks.csv"
    pd.DataFrame(rows).fillna("").to_csv(path, index=False)
    return path, served


@pytest.fixture(scope="module")
def paired_run(tmp_path_factory, covers_loaded, data_root, shared_cache):
    """The main job on the test catalogue: ``(catalogue, run folder, server, served files, workspace)``."""
    from conftest import LoopbackServer

    folder = tmp_path_factory.mktemp("paired")
    server = LoopbackServer()
    catalogue, served = _catalogue(folder, covers_loaded, data_root, server.url)
    server.files.update({path: Path(file).read_bytes() for path, file in served.items()})
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={folder}", f"paths.cache_dir={shared_cache}",
         "trainer.progress=false", "data=paired", f"data.catalogue={catalogue}", "labels=gtzan3",
         "audio.n_jobs=2", "audio.trainer.max_epochs=40", "split.val_fraction=0.25"],
        capture_output=True, text=True, timeout=900, cwd=folder)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].split("Run folder: ")[1])
    yield catalogue, run_dir, server, served, folder, result.stdout
    server.close()


def test_both_branches_share_one_split_and_no_album_or_artist_straddles_it(paired_run):
    catalogue, run_dir, *_, stdout = paired_run
    assert "fused (weighted) · pairing: real" in stdout and "majority class (always" in stdout
    metrics = {b: json.loads((run_dir / b / "metrics.json").read_text()) for b in ("covers", "audio")}
    assert metrics["covers"]["split_file"] == metrics["audio"]["split_file"]
    split = pd.read_csv(metrics["covers"]["split_file"], dtype=str)
    tracks = pd.read_csv(catalogue, dtype=str, keep_default_na=False).rename(columns={"track_id": "item_id"})
    parts = tracks.merge(split[["item_id", "split"]], on="item_id")
    assert set(parts["split"]) == {"train", "val", "test"}
    for key in ("album_id", "artist_ids"):  # the raw keys, not the code's own group column
        exploded = parts.assign(key=parts[key].str.split(";")).explode("key")
        assert exploded.groupby("key")["split"].nunique().max() == 1, key
    for branch in ("covers", "audio"):
        predictions = pd.read_csv(run_dir / branch / "predictions.csv", dtype={"item_id": str})
        merged = predictions.merge(split, on="item_id", suffixes=("", "_saved"))
        assert len(merged) == len(predictions) and (merged["split"] == merged["split_saved"]).all()
    fusion = json.loads((run_dir / "fusion" / "metrics_pairing-real.json").read_text())
    assert fusion["pairing"] == "real" and fusion["comparison_items"] > 0
    first = next(iter(fusion["rows"].values()))
    assert first["n_groups"] >= 2 and "ci95_by_group" in first


def test_every_bad_row_is_listed_with_its_reason_and_the_rest_trains(paired_run):
    _, run_dir, *_ = paired_run
    load = pd.read_csv(run_dir / "covers" / "load_problems.csv", keep_default_na=False)
    assert dict(zip(load["item_id"], load["reason"])) == {"nolabel": "no label: missing genre"}
    covers = pd.read_csv(run_dir / "covers" / "cover_problems.csv", keep_default_na=False)
    cover_reasons = dict(zip(covers["item_id"], covers["reason"]))
    assert set(cover_reasons) == {"deadcover", "notimage"}
    assert "download failed" in cover_reasons["deadcover"] and "404" in cover_reasons["deadcover"]
    assert "not a usable image" in cover_reasons["notimage"]
    audio = pd.read_csv(run_dir / "audio" / "input_problems.csv", keep_default_na=False)
    audio_reasons = dict(zip(audio["item_id"], audio["reason"]))
    assert set(audio_reasons) == {"refusedaudio", "badmp3", "coveronly"}
    assert "download failed" in audio_reasons["refusedaudio"]
    assert audio_reasons["badmp3"].startswith("unreadable audio")
    assert audio_reasons["coveronly"] == "no audio in the table"
    split = pd.read_csv(json.loads((run_dir / "covers" / "metrics.json").read_text())["split_file"], dtype=str)
    assert {"coveronly", "refusedaudio", "badmp3", "deadcover", "notimage", "urls"} <= set(split["item_id"])
    counts = json.loads((run_dir / "covers" / "metrics.json").read_text())["split_counts"]
    assert sum(sum(c.values()) for c in counts.values()) == 45 + 6 - 1  # every labelled row with a cover file


def test_url_rows_are_fetched_once_and_cached(paired_run):
    from acquire.catalogue import fetch_catalogue

    catalogue, run_dir, server, served, folder, _ = paired_run
    assert server.requests["/cover.jpg"] == 1 and server.requests["/clip.ogg"] == 1
    local = pd.read_csv(fetch_catalogue(catalogue, folder / "artifacts" / "downloads"), dtype=str,
                        keep_default_na=False).set_index("track_id")
    assert server.requests["/cover.jpg"] == 1 and server.requests["/clip.ogg"] == 1  # nothing fetched again
    assert server.requests["/absent.jpg"] == 2  # a failed URL is asked again next time
    for column, path in (("cover_path", "/cover.jpg"), ("audio_path", "/clip.ogg")):
        assert Path(local.loc["urls", column]).read_bytes() == Path(served[path]).read_bytes()
    assert local.loc["deadcover", "cover_path"] == "" and "404" in local.loc["deadcover", "cover_error"]


def test_a_trained_run_scores_a_catalogue_with_a_track_missing_its_audio_by_its_cover(paired_run, shared_cache):
    catalogue, run_dir, _, _, folder, _ = paired_run
    out = folder / "evaluated"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate_tracks.py"), f"model_dir={run_dir}", "data=paired",
         f"data.catalogue={catalogue}", f"paths.root_dir={folder}", f"paths.cache_dir={shared_cache}",
         f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=600, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    scored = pd.read_csv(out / "predictions.csv", dtype={"item_id": str}, keep_default_na=False).set_index("item_id")
    probabilities = [f"p_{g}" for g in ("classical", "jazz", "rock")]
    row = scored.loc["coveronly"]
    assert row["audio_error"] == "" and all(row[f"audio_{c}"] == "" for c in probabilities)
    np.testing.assert_allclose(row[probabilities].astype(float), row[[f"cover_{c}" for c in probabilities]].astype(float))
    assert "unreadable audio" in scored.loc["badmp3", "audio_error"]
    comparison = json.loads((out / "metrics_pairing-real.json").read_text())
    assert comparison["modalities"]["cover_only"] >= 2 and comparison["modalities"]["audio_only"] >= 1
    both = scored[(scored["cover_error"] == "") & (scored["audio_error"] == "") & (scored["audio_path"] != "")
                  & (scored["cover_path"] != "")]
    expected_accuracy = (both[[f"cover_{c}" for c in probabilities]].astype(float).to_numpy().argmax(1)
                         == both["label"].map({"classical": 0, "jazz": 1, "rock": 2}).to_numpy()).mean()
    assert comparison["rows"]["image-only · pairing: real"]["accuracy"] == pytest.approx(expected_accuracy)
    # Scoring goes through the training pipeline's own predict path: the audio branch's held-out
    # probabilities (features computed from the files) come back for the same tracks.
    held = pd.read_csv(run_dir / "audio" / "predictions.csv", dtype={"item_id": str}).set_index("item_id")
    common = held.index.intersection(scored.index)
    assert len(common) > 5
    np.testing.assert_allclose(scored.loc[common, [f"audio_{c}" for c in probabilities]].astype(float).to_numpy(),
                               held.loc[common, probabilities].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_crawl_then_catalogue_then_comparison_against_a_loopback_server(tmp_path, covers_loaded, data_root,
                                                                       shared_cache, loopback):
    """Album items → the crawler (covers by URL, previews by a Deezer-shaped search) → its items.csv as a
    paired catalogue → the three-way comparison, all against 127.0.0.1."""
    from acquire.crawl import CrawlSettings, crawl

    cover, audio = _sources(covers_loaded, data_root)
    files, items = {}, []
    for genre in GENRES:
        for k in range(8):
            files[f"/covers/{genre}{k}.jpg"] = Path(cover[genre][k]).read_bytes()
            files[f"/previews/{genre}{k}.ogg"] = Path(audio[genre][k]).read_bytes()
            items.append({"item_id": f"musicoset:{genre}{k}", "label": genre, "album_id": f"{genre}{k}".ljust(22, "x"),
                          "artist_ids": f"artist-{genre}{k}", "artist_names": f"Artist {genre}{k}",
                          "track_id": "", "track_title": f"{genre}{k}", "cover_url": f"/covers/{genre}{k}.jpg"})

    def search(query):
        title = query["q"][0].split('track:"')[1].rstrip('"')
        found = [{"id": 1, "type": "track", "title": title, "preview": f"{server.url}/previews/{title}.ogg"}]
        return 200, json.dumps({"data": found, "total": 1}).encode()

    server = loopback(files, {"/search": search})
    table = pd.DataFrame(items)
    table["cover_url"] = server.url + table["cover_url"]
    settings = CrawlSettings(deezer_api=server.url, musicbrainz_api=f"{server.url}/ws/2/",
                             coverart_api=f"{server.url}/coverart/", min_interval_s=0, musicbrainz_min_interval_s=0)
    crawled = crawl(table, tmp_path / "crawl", settings=settings, progress=False)
    assert (crawled["cover_path"] != "").all() and (crawled["audio_path"] != "").all()
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}", f"paths.cache_dir={shared_cache}",
         "trainer.progress=false", "data=paired", f"data.catalogue={tmp_path / 'crawl' / 'items.csv'}",
         "data.loader.label_column=label", "labels=gtzan3", "audio.trainer.max_epochs=30", "split.test_fraction=0.25",
         "split.val_fraction=0.25"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].split("Run folder: ")[1])
    comparison = json.loads((run_dir / "fusion" / "metrics_pairing-real.json").read_text())
    test_items = pd.read_csv(run_dir / "fusion" / "pairs_pairing-real.csv").query("split == 'test'")
    assert comparison["comparison_items"] == len(test_items) > 0
    assert set(test_items["cover_item_id"]) == set(test_items["audio_item_id"])  # each track's own cover and audio
