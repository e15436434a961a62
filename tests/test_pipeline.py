"""The scoring pipeline: stages side by side keep order, bound memory, stop on errors, and score as before."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring.pipeline import StageClock, run_stages
from track_tables import track_table

ROOT = Path(__file__).resolve().parent.parent


def _jitter(seed: int):
    rng = random.Random(seed)

    def work(x):
        time.sleep(rng.random() * 0.003)
        return x

    return work


def test_stages_run_side_by_side_and_keep_the_order():
    clock = StageClock()
    stages = [("double", lambda x: _jitter(1)(2 * x)), ("shift", lambda x: _jitter(2)(x + 1)), ("square", lambda x: x * x)]
    out = list(run_stages(range(200), stages, depth=2, clock=clock))
    assert out == [(2 * x + 1) ** 2 for x in range(200)]
    assert clock.items == {"double": 200, "shift": 200, "square": 200}
    assert set(clock.shares(1.0)) == {"double", "shift", "square"}

    # Side by side: stage "a" prepares item 1 while stage "b" is still on item 0 (one after the
    # other, "a" would wait for "b" in vain).
    b_started, b_may_finish, overlapped = threading.Event(), threading.Event(), []

    def a(x):
        if x == 1:
            overlapped.append(b_started.wait(timeout=10))
            b_may_finish.set()
        return x

    def b(x):
        if x == 0:
            b_started.set()
            b_may_finish.wait(timeout=10)
        return x

    assert list(run_stages(range(3), [("a", a), ("b", b)], depth=1)) == [0, 1, 2] and overlapped == [True]


def test_the_queues_are_bounded_whatever_the_table_length():
    pulled = 0

    def rows():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    stages = [("a", lambda x: x), ("b", lambda x: x)]
    results = run_stages(rows(), stages, depth=2)
    taken = [next(results) for _ in range(5)]
    time.sleep(0.5)  # every stage has had time to run ahead as far as the queues let it
    # depth items in each of the 3 queues, one in the hands of each stage and of the source.
    assert taken == list(range(5)) and pulled <= 5 + 3 * 2 + 3
    results.close()  # closing early stops every stage
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("pipeline-")]
    assert pulled < 100


def test_an_error_stops_the_stages_before_it_after_the_finished_batches_are_through():
    pulled, written = 0, []

    def rows():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    def model(x):
        if x == 7:
            raise RuntimeError("model broke on batch 7")
        return x

    stages = [("prepare", lambda x: x), ("model", model), ("write", lambda x: written.append(x) or x)]
    out = []
    with pytest.raises(RuntimeError, match="batch 7"):
        for x in run_stages(rows(), stages, depth=2):
            out.append(x)
    assert out == written == list(range(7))  # everything before the failure was written
    assert pulled < 30
    assert not [t for t in threading.enumerate() if t.name.startswith("pipeline-")]
    with pytest.raises(ValueError, match="depth"):
        list(run_stages(range(3), stages, depth=0))


def _assert_same_scores(scores: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Ids, statuses, modalities, predictions and errors equal; probabilities within 1e-5 (NaN where not scored)."""
    probabilities = [c for c in scores.columns if c.startswith("p_")]
    others = [c for c in scores.columns if c not in probabilities]
    pd.testing.assert_frame_equal(scores[others], expected[others])
    np.testing.assert_allclose(scores[probabilities].replace("", np.nan).astype(float),
                               expected[probabilities].replace("", np.nan).astype(float), atol=1e-5)


def _sequential_scores(table: Path, run_dir: Path, output: Path, catalogue: Path, batch_size: int,
                       defer_features: bool = False) -> pd.DataFrame:
    """The scorer one batch after another, as it was before the pipeline (and as the Ray engine runs it);
    ``defer_features``: as a Ray GPU actor gets its batches, the audio decoded and its features not computed."""
    from acquire.http import Downloader
    from scoring.jobs import plan_job
    from scoring.tracks import output_rows, prepare_batch, scoring_inputs

    job = plan_job(table, run_dir, output, catalogue=catalogue, batch_size=batch_size)
    try:
        spec, downloader = scoring_inputs(job.scorer), Downloader(job.download_dir)
        for rows in job.batches(batch_size):
            prepared = prepare_batch(spec, rows, downloader, None, defer_features=defer_features)
            if defer_features and prepared.audio is not None and prepared.audio.decoded is not None:
                assert prepared.audio.clips is None  # nothing computed before the models' device has it
                decoded = prepared.audio.decoded.outcomes.values()
                assert not any(isinstance(value, dict) for value, _ in decoded)  # no features yet
            job.writer.write(output_rows(job.scorer, prepared, "cpu"))
        job.finish([], 1.0)
    finally:
        job.writer.release()
    return pd.read_csv(output, keep_default_na=False)


def test_pipelined_scores_equal_the_batch_by_batch_scorer_row_for_row(main_job_run, covers_loaded, data_root,
                                                                       cover_server, tmp_path):
    from scoring.jobs import score_table

    _, run_dir = main_job_run
    table, catalogue, _ = track_table(tmp_path, covers_loaded, data_root, cover_server, rows=30)
    reference = _sequential_scores(table, run_dir, tmp_path / "sequential.csv", catalogue, batch_size=4)
    summary = score_table(table, run_dir, tmp_path / "pipelined.csv", batch_size=4, catalogue=catalogue,
                          device="cpu", progress=False)
    pipelined = pd.read_csv(tmp_path / "pipelined.csv", keep_default_na=False)
    _assert_same_scores(pipelined, reference)
    assert pipelined["row"].tolist() == list(range(30))
    assert set(pipelined["status"]) > {"ok", "empty row"}  # the broken kinds are there
    assert set(summary["stage_busy_share"]) == {"fetch", "decode covers", "audio features", "cover network",
                                                "audio model", "fusion", "write"}
    assert summary["batch_size"] == 4 and summary["steady_tracks_per_s"] > 0


def test_features_left_to_the_models_device_score_as_the_local_scorer(main_job_run, covers_loaded, data_root,
                                                                      cover_server, tmp_path):
    """What a Ray GPU actor does (here on the CPU): the batch's audio only decoded by the preparing task, the
    GTZAN features computed with the models; the same rows as the local scorer."""
    from scoring.jobs import score_table

    _, run_dir = main_job_run
    table, catalogue, _ = track_table(tmp_path, covers_loaded, data_root, cover_server, rows=20)
    deferred = _sequential_scores(table, run_dir, tmp_path / "deferred.csv", catalogue, batch_size=8,
                                  defer_features=True)
    score_table(table, run_dir, tmp_path / "local.csv", batch_size=8, catalogue=catalogue, device="cpu",
                progress=False)
    local = pd.read_csv(tmp_path / "local.csv", keep_default_na=False)
    _assert_same_scores(deferred, local)
    assert (local["modalities"].str.contains("audio")).sum() >= 5  # audio was scored, not only failed


def test_a_gpu_feature_batch_is_sized_by_free_memory():
    from audio.extract import GPU_BATCH_RANGE, windows_per_batch

    clip = 30 * 22050
    assert windows_per_batch(140 * 2**30, clip) == GPU_BATCH_RANGE[1]  # an idle H200: the most
    assert windows_per_batch(2 * 2**30, clip) == 10  # 1,024 MiB of 2 GiB free, 100 MiB a clip
    assert windows_per_batch(0, clip) == GPU_BATCH_RANGE[0]
    assert windows_per_batch(2 * 2**30, clip // 10) == 102  # 3-s segments: 10 MiB each


def test_a_killed_pipelined_run_resumes_with_no_row_written_twice(main_job_run, covers_loaded, data_root,
                                                                   cover_server, tmp_path):
    from scoring.jobs import score_table

    _, run_dir = main_job_run
    n_rows = 48
    table, catalogue, _ = track_table(tmp_path, covers_loaded, data_root, cover_server, rows=n_rows)
    out = tmp_path / "scores.csv"
    script = (f"from scoring.jobs import score_table; score_table({str(table)!r}, {str(run_dir)!r}, {str(out)!r}, "
              f"batch_size=4, catalogue={str(catalogue)!r}, device='cpu', progress=False)")
    job = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if out.is_file() and out.read_text().count("\n") > 9:  # header and two batches at least
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be killed: make the table longer"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert 0 < out.read_text().count("\n") - 1 < n_rows  # rows written before the kill (the header aside)
    summary = score_table(table, run_dir, out, batch_size=4, catalogue=catalogue, device="cpu", progress=False)
    scores = pd.read_csv(out, keep_default_na=False)
    assert scores["row"].tolist() == list(range(n_rows))  # each row once, in order
    assert summary["already_done"] + summary["written_now"] == n_rows
    whole = tmp_path / "whole.csv"
    score_table(table, run_dir, whole, batch_size=4, catalogue=catalogue, device="cpu", progress=False)
    # Resumed batches may start at another row than the whole run's (a kill inside a batch's lines):
    # float32 sums over other batch neighbours round differently, hence the tolerance.
    _assert_same_scores(scores, pd.read_csv(whole, keep_default_na=False))
