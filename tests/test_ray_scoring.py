"""Batch scoring on Ray Data (a local instance of 2 CPUs): killed, resumed, and equal to the local scorer."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring.jobs import score_table
from track_tables import track_table

ROOT = Path(__file__).resolve().parent.parent
ROWS = 200
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_scores(main_job_run, covers_loaded, data_root, cover_server, tmp_path_factory, shared_cache):
    """The 200-row table (every kind of broken row among its rows) scored by the local engine."""
    folder = tmp_path_factory.mktemp("ray_scoring")
    table, catalogue, _ = track_table(folder, covers_loaded, data_root, cover_server, rows=ROWS)
    _, run_dir = main_job_run
    score_table(table, run_dir, folder / "local.csv", batch_size=16, catalogue=catalogue, cache_dir=shared_cache,
                progress=False)
    return folder, table, catalogue, run_dir, pd.read_csv(folder / "local.csv", keep_default_na=False)


def _score_ray(folder, table, catalogue, run_dir, cache, output, *extra, **popen):
    command = [sys.executable, str(ROOT / "scripts" / "score.py"), "engine=ray", "ray.num_cpus=2",
               f"model_dir={run_dir}", f"input={table}", f"output={output}", f"catalogue={catalogue}",
               "batch_size=8", "progress=false", f"paths.root_dir={folder}", f"paths.cache_dir={cache}", *extra]
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _summary(stdout: str) -> dict:
    """The JSON summary score.py prints last (indented, so it starts a line of its own)."""
    return json.loads(stdout[stdout.rindex("\n{\n") + 1:stdout.rindex("}") + 1])


def _same_scores(ray_scores: pd.DataFrame, local: pd.DataFrame) -> None:
    assert ray_scores["row"].tolist() == list(range(ROWS))  # one row per input row, in input order
    for column in ("track_id", "status", "modalities", "predicted", "cover_error", "audio_error"):
        assert ray_scores[column].fillna("").astype(str).tolist() == local[column].astype(str).tolist(), column
    probabilities = [c for c in local.columns if c.startswith("p_")]
    np.testing.assert_allclose(ray_scores[probabilities].replace("", np.nan).to_numpy(float),
                               local[probabilities].replace("", np.nan).to_numpy(float), atol=2e-6)


def test_ray_scoring_killed_midway_resumes_and_equals_the_local_scorer(local_scores, shared_cache):
    """Killed after its first parts, run again: it scores only the rest, and the whole output (Parquet and
    its CSV copy) is the local scorer's, row for row."""
    folder, table, catalogue, run_dir, local = local_scores
    assert (local["status"] != "ok").sum() > 40 and (local["status"] == "ok").sum() > 80
    output = folder / "killed.parquet"
    parts = folder / "killed.parquet.parts"
    # Its own session, so the kill takes the Ray processes it started with it.
    process = _score_ray(folder, table, catalogue, run_dir, shared_cache, output, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 3):
        assert process.poll() is None, process.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no part written in time"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    written = set(pd.concat([pd.read_parquet(p) for p in parts.glob("part-*.parquet")])["row"])
    assert 0 < len(written) < ROWS and not output.exists()

    # Resumed with the GTZAN features left to the actor (what a GPU cluster does, here on the CPU), on a
    # cache of its own, so the features are computed again there, not read from the local run's cache.
    fresh_cache = folder / "actor-cache"
    process = _score_ray(folder, table, catalogue, run_dir, fresh_cache, output, "also_csv=true",
                         "ray.features_on_actors=true")
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    summary = _summary(stdout)
    assert summary["already_done"] == len(written) and summary["written_now"] == ROWS - len(written)
    assert summary["ray"]["cpus"] == 2 and summary["ray"]["features_on_actors"] is True
    assert list((fresh_cache / "gtzan_features").rglob("*.json"))
    _same_scores(pd.read_parquet(output), local)
    _same_scores(pd.read_csv(folder / "killed.csv", keep_default_na=False), local)
    assert not parts.exists()
