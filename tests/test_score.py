"""Batch scoring: one output row per input row, broken rows recorded, resume and shards agree with one run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.heads import fusion_inputs, load_fusion_head
from scoring.jobs import score_table
from scoring.tables import open_scores, parse_shard, read_track_table, resolve_ids
from conftest import GENREFUSION
from track_tables import track_table

ROOT = Path(__file__).resolve().parent.parent


def test_scoring_keeps_every_row_and_resumes(main_job_run, covers_loaded, data_root, cover_server, tmp_path):
    _, run_dir = main_job_run
    table, catalogue, _ = track_table(tmp_path, covers_loaded, data_root, cover_server)
    n_rows = 14
    out = tmp_path / "scores.csv"
    result = subprocess.run([GENREFUSION, "score", f"model_dir={run_dir}", f"input={table}", f"output={out}",
                             f"catalogue={catalogue}", "batch_size=4", "progress=false", f"paths.root_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = pd.read_csv(out, keep_default_na=False)
    assert scores["row"].tolist() == list(range(n_rows))
    status = scores.set_index("row")["status"]
    modalities = scores.set_index("row")["modalities"]
    for row in (0, 1, 2, 3, 4, 11, 12):
        assert status[row] == "ok", (row, status[row])
    assert modalities[0] == "cover" and modalities[1] == "audio" and modalities[2] == "cover+audio"
    assert modalities[4] == "audio" and "missing file" in scores.loc[4, "cover_error"]
    assert modalities[11] == "cover+audio" and modalities[12] == "cover"
    assert "not a usable image" in status[5] or "cover:" in status[5]
    assert status[6].startswith("audio:") and "silent" in status[7]
    assert status[8] == "empty row" and status[9].startswith("malformed row")
    assert status[10].startswith("unknown id") and "download failed" in status[13]
    probabilities = scores[[c for c in scores.columns if c.startswith("p_")]].replace("", np.nan).astype(float)
    ok = (scores["status"] == "ok").to_numpy()
    np.testing.assert_allclose(probabilities[ok].sum(axis=1), 1.0, atol=1e-4)
    assert probabilities[~ok].isna().all().all()

    head = load_fusion_head(run_dir / "fusion" / "fusion_head.json")
    fused = head.predict_proba(fusion_inputs(probabilities.iloc[[0]].to_numpy(float), probabilities.iloc[[1]].to_numpy(float)))
    # Rows 0-2 go through the branches in different batches, where float32 may round differently.
    np.testing.assert_allclose(probabilities.iloc[2].to_numpy(float), fused[0], atol=2e-4)

    # Killed during the third batch: the resumed file equals the uninterrupted one.
    resumed = tmp_path / "resumed.csv"
    lines = out.read_text().splitlines(keepends=True)
    resumed.write_text("".join(lines[:9]) + lines[9][:7])  # killed in the middle of writing row 8
    (tmp_path / "resumed.csv.run.json").write_text((tmp_path / "scores.csv.run.json").read_text())
    summary = score_table(table, run_dir, resumed, batch_size=4, catalogue=catalogue, progress=False)
    assert summary["already_done"] == 8 and summary["written_now"] == n_rows - 8
    pd.testing.assert_frame_equal(pd.read_csv(resumed, keep_default_na=False), scores)
    assert score_table(table, run_dir, resumed, catalogue=catalogue, progress=False)["written_now"] == 0

    shards = [pd.read_csv(tmp_path / f"shard{i}.csv", keep_default_na=False) for i in range(3)
              if score_table(table, run_dir, tmp_path / f"shard{i}.csv", shard=f"{i}/3", catalogue=catalogue,
                             progress=False)]
    merged = pd.concat(shards).sort_values("row").reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, scores)
    assert [set(s["row"] % 3) for s in shards] == [{0}, {1}, {2}]


def test_half_written_lines_are_cut(tmp_path):
    from scoring.tables import drop_partial_last_line

    output = tmp_path / "scores.csv"
    output.write_bytes(b"row,status\n0,ok\n1,o")
    drop_partial_last_line(output)
    assert output.read_bytes() == b"row,status\n0,ok\n"
    output.write_bytes(b"row,sta")  # killed while writing the header
    drop_partial_last_line(output)
    assert output.read_bytes() == b""


def test_track_table_from_a_spreadsheet_keeps_its_ids_and_other_encodings_are_refused(tmp_path):
    # Spreadsheet programs write a byte-order mark before the header; the first column must survive it.
    (tmp_path / "excel.csv").write_bytes("\ufefftrack_id,cover_path\nt1,a.jpg\n".encode("utf-8"))
    table, header = read_track_table(tmp_path / "excel.csv")
    assert header == ["track_id", "cover_path"] and table["track_id"].tolist() == ["t1"]
    (tmp_path / "latin1.csv").write_bytes("track_id,cover_path\ntrack-é,a.jpg\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv is not UTF-8"):
        read_track_table(tmp_path / "latin1.csv")


def test_a_parquet_track_table_reads_as_its_csv_twin(tmp_path):
    """Numbers, nulls and a list column (artists) read as the CSV's text; a struct column is refused by name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"track_id": pa.array([1.0, None]), "artist_ids": pa.array([["a", "b"], None]),
                             "cover_path": ["a.jpg ", "b.jpg"]}), tmp_path / "tracks.parquet")
    (tmp_path / "tracks.csv").write_text("track_id,artist_ids,cover_path\n1,a;b,a.jpg\n,,b.jpg\n")
    from_parquet, header = read_track_table(tmp_path / "tracks.parquet")
    from_csv, _ = read_track_table(tmp_path / "tracks.csv")
    assert header == ["track_id", "artist_ids", "cover_path"]
    pd.testing.assert_frame_equal(from_parquet, from_csv, check_dtype=False)
    pq.write_table(pa.table({"track_id": ["t1"], "meta": pa.array([{"year": 1999}])}), tmp_path / "struct.parquet")
    with pytest.raises(ValueError, match="column 'meta' of type struct"):
        read_track_table(tmp_path / "struct.parquet")


def test_a_scores_table_scored_again_gets_its_own_row_numbers_and_errors(tmp_path):
    """A table with its own ``row``/``row_error`` columns (an earlier output, scored again through a
    catalogue) is numbered and checked afresh; its other cells are read as usual."""
    lines = "row,track_id,status,row_error\n7,t1,ok,\n3,,ok,empty row\n"
    (tmp_path / "scores.csv").write_text(lines)
    pd.read_csv(tmp_path / "scores.csv", dtype=str).to_parquet(tmp_path / "scores.parquet")
    for name in ("scores.csv", "scores.parquet"):
        table, header = read_track_table(tmp_path / name)
        assert header == ["row", "track_id", "status", "row_error"]
        assert table["row"].tolist() == [0, 1] and table["track_id"].tolist() == ["t1", ""]
        resolved = resolve_ids(table, None).set_index("row")
        assert resolved.loc[0, "row_error"] == "unknown id 't1' (no catalogue given)"
        assert resolved.loc[1, "row_error"] == "empty row"


def test_one_job_writes_an_output_at_a_time_and_a_killed_one_leaves_it_free(tmp_path):
    """Two jobs appending to one output would write its rows twice: the second is refused while the first
    runs; after it ends (finished, or killed: the system drops its lock) the output can be taken again."""
    output, record = tmp_path / "scores.csv", {"input": "tracks.csv", "shard": "0/1"}
    first = open_scores(output)
    assert first.claim(record) == set()
    with pytest.raises(ValueError, match=r"scores.csv is being written by another scoring job \(pid \d+ on "):
        open_scores(output).claim(record)
    first.write(pd.DataFrame({"row": [0], "status": ["ok"]}))
    first.finish(["row", "status"])
    first.release()
    assert not (tmp_path / "scores.csv.lock").exists()
    killed = subprocess.run([sys.executable, "-c", "import os, sys; from pathlib import Path; "
                             "from scoring.tables import open_scores; "
                             "open_scores(Path(sys.argv[1])).claim({'input': 'tracks.csv', 'shard': '0/1'}); "
                             "os._exit(9)", str(output)])
    assert killed.returncode == 9 and (tmp_path / "scores.csv.lock").exists()
    again = open_scores(output)
    assert again.claim(record) == {0}  # the killed job's lock file is left, its lock is not
    again.release()


def test_bad_shard_and_model_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="shard"):
        parse_shard("3/3")
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("half")
    with pytest.raises(FileNotFoundError, match="no cover or audio checkpoint"):
        score_table(tmp_path / "t.csv", tmp_path, tmp_path / "out.csv")
    (tmp_path / "catalogue.csv").write_text("id,cover_path\nx,a.jpg\n")
    with pytest.raises(ValueError, match="no track_id or item_id column"):
        resolve_ids(read_track_table(tmp_path / "catalogue.csv")[0], tmp_path / "catalogue.csv")


def test_relative_paths_and_one_branch_folder_as_model_dir(main_job_run, covers_loaded, tmp_path):
    """A track table with paths relative to itself, scored from another folder with model_dir relative to the
    working directory and pointing at the covers branch alone; the numbers are the cover model's own."""
    import os
    import shutil

    from covers.predict import load_cover_model, predict_covers

    _, run_dir = main_job_run
    (tmp_path / "tables" / "img").mkdir(parents=True)
    source = covers_loaded.items[covers_loaded.items["source"] == "discogs"]["cover_path"].iloc[90]
    shutil.copy(source, tmp_path / "tables" / "img" / "cover.jpg")
    (tmp_path / "tables" / "tracks.csv").write_text("track_id,cover_path\nt1,img/cover.jpg\nt2,img/absent.jpg\n")
    (tmp_path / "work").mkdir()
    model_dir = os.path.relpath(run_dir / "covers", tmp_path / "work")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "score.py"), f"model_dir={model_dir}",
                             "input=../tables/tracks.csv", "output=scores.csv", "progress=false",
                             f"paths.root_dir={tmp_path / 'work'}"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "work" / "scores.csv", keep_default_na=False)
    assert scores["status"].tolist()[0] == "ok" and scores["modalities"].tolist() == ["cover", ""]
    assert "missing file" in scores["status"].iloc[1]
    model, _ = load_cover_model(run_dir / "covers" / "checkpoint.pt")
    _, expected = predict_covers(model, pd.DataFrame({"item_id": ["t1"], "cover_path": [source]}))
    labels = model.labels
    np.testing.assert_allclose(scores.loc[0, [f"p_{c}" for c in labels]].astype(float), expected[0], atol=1e-6)


@pytest.mark.parametrize("arguments,message", [
    (["input=tracks.csv"], "error: Missing mandatory value: model_dir ["),  # one line, not OmegaConf's three
    (["model_dir=run", "input=tracks.csv", "shard=abc"], "error: shard must look like i/n"),  # not int()'s message
    (["model_dir=run", "input=tracks.csv", "output=./tracks.csv"], "is the table being scored"),
    (["model_dir=run", "input=tracks.csv", "catalogue=items.csv", "output=items.csv"], "is the table being scored"),
    (["model_dir=run", "input=tracks.csv", "output=."], "is a folder, not a file"),  # was a traceback after scoring
])
def test_scoring_mistakes_are_one_readable_line_and_leave_the_tables_alone(tmp_path, arguments, message):
    tables = {tmp_path / "tracks.csv": "track_id,cover_path\na,a.jpg\n",
              tmp_path / "items.csv": "item_id,cover_path\na,a.jpg\n"}
    for path, text in tables.items():
        path.write_text(text)
    result = subprocess.run([GENREFUSION, "score", *arguments, "progress=false",
                             f"paths.root_dir={tmp_path}"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 2 and "Traceback" not in result.stderr  # the error, the hint
    assert all(path.read_text() == text for path, text in tables.items())


def test_the_cover_network_in_bf16_scores_as_float32_does_within_its_rounding(main_job_run, covers_loaded,
                                                                               data_root, cover_server, tmp_path):
    """``cover_precision=bf16`` (opt-in on a CPU): the same rows, statuses and predictions as float32 here, the
    cover probabilities within bf16's rounding (not bit-identical: the bf16 path ran); a typo is refused."""
    _, run_dir = main_job_run
    table, catalogue, _ = track_table(tmp_path, covers_loaded, data_root, cover_server)
    scores = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"scores-{precision}.csv"
        score_table(table, run_dir / "covers", out, batch_size=8, catalogue=catalogue, progress=False,
                    cover_precision=precision)
        scores[precision] = pd.read_csv(out, keep_default_na=False)
    fp32, bf16 = scores["fp32"], scores["bf16"]
    assert fp32["status"].tolist() == bf16["status"].tolist() and (fp32["status"] == "ok").sum() >= 5
    columns = [c for c in fp32.columns if c.startswith("p_")]
    ok = (fp32["status"] == "ok").to_numpy()
    a, b = (frame.loc[ok, columns].astype(float).to_numpy() for frame in (fp32, bf16))
    np.testing.assert_allclose(a, b, atol=0.03)
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="precision must be one of"):
        score_table(table, run_dir / "covers", tmp_path / "x.csv", cover_precision="half")
