"""Broken inputs of every kind (tests/broken_corpus.py): each ends in a clear error or a per-row failure with
its reason, the other rows are scored, and nothing hangs (every case in a subprocess runs under a time-out;
the config mistakes, run in this process, stop before any work)."""
from __future__ import annotations

import logging
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import broken_corpus
from conftest import closed_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    return broken_corpus.build(tmp_path_factory.mktemp("broken"))


def _run(script: str, *args: str, cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.fixture
def run_here(tmp_path, monkeypatch, capsys):
    """``scripts/<script> args…`` run in this process from ``tmp_path``: ``(exit status, stderr)``.

    For entry points that must stop before any work: a fresh process would spend most of each case
    importing torch. Tests of a whole process's behaviour use :func:`_run`.
    """
    def run(script: str, *args: str) -> tuple[int, str]:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / script), *args])
        loggers = [logging.getLogger()] + [logger for logger in logging.root.manager.loggerDict.values()
                                           if isinstance(logger, logging.Logger)]
        saved = [(logger, logger.handlers[:], logger.level, logger.disabled, logger.propagate) for logger in loggers]
        try:
            with pytest.raises(SystemExit) as stopped:
                runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
        finally:
            # Hydra configured logging for the run (handlers on this test's captured stderr, which closes
            # with it): later tests in this process must log as before.
            for logger, handlers, level, disabled, propagate in saved:
                for handler in set(logger.handlers) - set(handlers):
                    handler.close()
                logger.handlers[:], logger.level, logger.disabled, logger.propagate = handlers, level, disabled, propagate
            for name, logger in list(logging.root.manager.loggerDict.items()):
                if isinstance(logger, logging.Logger) and logger not in loggers:
                    for handler in logger.handlers[:]:
                        handler.close()
                        logger.removeHandler(handler)
        return stopped.value.code, capsys.readouterr().err
    return run


@pytest.mark.parametrize("name,reason", [
    ("cover_empty", "empty file"), ("cover_text", "not a usable image"), ("cover_folder", "not a regular file"),
    ("cover_device", "not a regular file"), ("cover_long_name", "path too long"),
    ("cover_long_path", "path too long"), ("cover_nul_path", "NUL character"),
])
def test_bad_cover_files_are_refused_with_their_reason(corpus, name, reason):
    from covers.images import CoverError, load_cover

    with pytest.raises(CoverError, match=reason):
        load_cover(corpus[name], 32)


def test_sixteen_bit_grey_and_exif_rotated_covers_decode_as_seen(corpus):
    from covers.images import load_cover

    grey = load_cover(corpus["cover_grey16"], 64)
    assert grey.min() < 10 and grey.max() > 245 and 100 < grey.mean() < 155  # the gradient, not all white
    upright = load_cover(corpus["cover_exif_rotated"], 64)  # square-resized: red stands on top of blue
    assert upright[5, 32, 0] > 200 and upright[5, 32, 2] < 60 and upright[58, 32, 2] > 200


@pytest.mark.parametrize("name,reason", [
    ("audio_device", "not a regular file"), ("audio_long_name", "path too long"),
    ("audio_dc_offset", "silent audio.*constant offset"), ("audio_5ms", "too short for this model"),
    ("audio_1s", "too short for this model"), ("audio_truncated", "unreadable audio|too short"),
    ("audio_garbage", "unreadable audio"), ("audio_nan", "corrupt audio.*non-finite samples"),
    ("audio_nul_path", "NUL character"),
])
def test_bad_audio_files_are_refused_with_their_reason(corpus, name, reason):
    from audio.extract import extract_features

    started = time.monotonic()
    result = extract_features(pd.DataFrame({"item_id": [name], "audio_path": [corpus[name]]}), progress=False,
                              min_seconds=10)
    assert time.monotonic() - started < 30  # /dev/zero is refused, not read forever
    assert len(result.items) == 0
    assert result.problems["reason"].str.contains(reason).all(), result.problems["reason"].tolist()


@pytest.mark.parametrize("name", ["model_empty", "model_garbage", "model_truncated"])
def test_broken_model_files_are_one_clear_error_naming_the_file(corpus, name):
    from engine.inference import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match=Path(corpus[name]).name):
        load_checkpoint(corpus[name])


@pytest.mark.parametrize("name", ["model_payload", "model_payload_legacy"])
def test_a_checkpoint_carrying_code_is_refused_without_running_it(corpus, name):
    from engine.inference import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(corpus[name])
    assert not Path(corpus["payload_marker"]).exists()


def test_tables_with_repeated_columns_or_another_encoding_are_clear_errors(tmp_path):
    from data.covers import load_covers_table
    from scoring.tables import read_track_table

    (tmp_path / "repeated.csv").write_text("track_id,cover_path,cover_path\nt1,a.jpg,b.jpg\n")
    with pytest.raises(ValueError, match=r"names column\(s\) \['cover_path'\] more than once"):
        read_track_table(tmp_path / "repeated.csv")
    (tmp_path / "latin1.csv").write_bytes("path,genre\nimg/é.jpg,pop\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv is not UTF-8"):
        load_covers_table(tmp_path / "latin1.csv")


def test_covers_table_with_a_byte_order_mark_and_a_file_listed_twice_loads(tmp_path, covers_loaded):
    from data.covers import load_covers_table

    cover = covers_loaded.items["cover_path"].iloc[0]
    (tmp_path / "bom.csv").write_bytes(f"\ufeffpath,genre\n{cover},pop\n{cover},rock\n".encode("utf-8"))
    loaded = load_covers_table(tmp_path / "bom.csv")
    assert loaded.items["label"].tolist() == ["pop"]
    assert loaded.problems["reason"].tolist() == ["listed twice (the first row is kept)"]


@pytest.mark.parametrize("override,message", [
    ("paths.data_root=/nonexistent", "No data root found"),
    ("branches=[]", "branches is empty"),
    ("trainer.max_epochs=abc", "trainer.max_epochs must be int"),
    ("split=kfold split.folds=abc", "split.folds must be int"),  # the fold loop reads it before any branch
    # A layer of no units trained and reported the majority class (0.107 on GTZAN) as the model's accuracy.
    ("audio.model.hidden=[0]", "audio.model.hidden must be a list of positive integers"),
])
def test_config_mistakes_are_one_readable_line(tmp_path, run_here, override, message):
    status, stderr = run_here("run.py", f"paths.root_dir={tmp_path}", "branches=[audio]", *override.split())
    assert status == 2
    assert message in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("override,message", [
    # Refused after the segments' log-mels were extracted and the CNN trained; the other was ignored silently.
    ("audio=mel_cnn +audio.reference=logreg", "audio.reference=logreg compares per-clip feature models"),
    ("audio.reference=lr", "audio.reference must be null or logreg, got 'lr'"),
])
def test_audio_config_mistakes_stop_the_branch_before_its_inputs_are_read(tmp_path, run_here, override, message):
    status, stderr = run_here("run.py", f"paths.root_dir={tmp_path}", "branches=[audio]", *override.split(),
                              "hydra.run.dir=run")
    assert status == 2
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run" / "audio").exists()


@pytest.mark.parametrize("override,message", [
    # The audio branch trains first: each of these used to stop the run only after it had trained.
    ("covers.mode=foo", "unknown covers.mode 'foo'"),
    ("covers.model.backbone=resnet50", "resnet50 with pretrained=true needs ImageNet weights"),
    ("covers.trainer.max_epochs=0", "trainer.max_epochs, patience and batch_size must be ≥ 1"),
    ("covers.mode=frozen +covers.augment={rap:[hflip]}", "covers.augment changes pixels"),
    ("fusion.method=foo", "unknown fusion.method 'foo'"),
    ("fusion.pairing=paired", "fusion.pairing must be one of auto, real, synthetic"),
    # These three ran to the end: a weight of 3 scored 3·cover − 2·audio, the other two ignored a setting.
    ("fusion.weight=3", "fusion.weight is the cover branch's share, in [0, 1]"),
    ("fusion.method=mean fusion.weight=0.3", "method=mean takes none"),
    ("+fusion.metod=mean", "fusion: unknown key(s) ['metod']"),
])
def test_cover_and_fusion_config_mistakes_stop_the_run_before_any_branch_trains(tmp_path, run_here, monkeypatch,
                                                                              override, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ResNet50 weights there
    status, stderr = run_here("run.py", f"paths.root_dir={tmp_path}", *override.split(), "hydra.run.dir=run")
    assert status == 2
    assert message in stderr and "Traceback" not in stderr
    assert not {"audio", "covers"} & {p.name for p in (tmp_path / "run").iterdir()}  # no branch trained


def test_a_covers_table_too_small_for_a_group_split_is_a_clear_error(tmp_path, discogs_covers_csv):
    csv = discogs_covers_csv(tmp_path / "tiny.csv", 1)
    result = _run("run.py", f"paths.root_dir={tmp_path}", "branches=[covers]", "covers.mode=random_forest",
                  f"covers.data.loader.csv_path={csv}", "covers.data.name=tiny", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "too few to hold out" in result.stderr and "Traceback" not in result.stderr


def test_scoring_survives_every_broken_row_and_a_header_only_table(main_job_run, corpus, tmp_path):
    from scoring.jobs import score_table

    _, run_dir = main_job_run
    good_cover = corpus["cover_grey16"]
    rows = [(name, path, "") for name, path in corpus.items() if name.startswith("cover_")]
    rows += [(name, good_cover if name == "audio_12s_tone" else "", path)
             for name, path in corpus.items() if name.startswith("audio_")]
    table = tmp_path / "tracks.csv"
    pd.DataFrame(rows, columns=["track_id", "cover_path", "audio_path"]).to_csv(table, index=False)
    summary = score_table(table, run_dir, tmp_path / "scores.csv", progress=False, n_jobs=1)
    scores = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False).set_index("track_id")
    assert len(scores) == len(rows) and summary["written_now"] == len(rows)
    assert set(scores.index[scores["status"] == "ok"]) == {"cover_grey16", "cover_exif_rotated", "audio_12s_tone"}
    assert scores.loc["audio_12s_tone", "modalities"] == "cover+audio"
    for name in ("audio_5ms", "audio_1s"):
        assert "too short for this model" in scores.loc[name, "status"]
    assert "constant offset" in scores.loc["audio_dc_offset", "status"]
    assert "not a regular file" in scores.loc["audio_device", "status"]
    assert "path too long" in scores.loc["cover_long_path", "status"]
    assert "NUL character" in scores.loc["cover_nul_path", "status"] and "\x00" not in scores.to_csv()
    (tmp_path / "empty.csv").write_text("track_id,cover_path\n")
    assert score_table(tmp_path / "empty.csv", run_dir, tmp_path / "empty_scores.csv", progress=False)["rows_in_shard"] == 0
    assert (tmp_path / "empty_scores.csv").read_text().startswith("row,track_id,item_id,status")


def test_fifty_dead_urls_fail_fast(main_job_run, tmp_path, loopback):
    from scoring.jobs import score_table

    _, run_dir = main_job_run
    server = loopback()
    refused = f"http://127.0.0.1:{closed_port()}"
    urls = [f"{refused}/cover{i}.jpg" if i % 2 else f"{server.url}/gone{i}.jpg" for i in range(50)]
    table = tmp_path / "dead.csv"
    pd.DataFrame({"track_id": [f"t{i}" for i in range(50)], "cover_url": urls}).to_csv(table, index=False)
    started = time.monotonic()
    score_table(table, run_dir / "covers", tmp_path / "scores.csv", progress=False)
    assert time.monotonic() - started < 60
    statuses = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)["status"]
    assert len(statuses) == 50 and statuses.str.contains("download failed").all()
    # "HTTP 404", not "404": the refused port's number can hold those digits.
    assert statuses.str.contains("ConnectionError").sum() == 25 and statuses.str.contains("HTTP 404").sum() == 25


def test_killing_the_scorer_leaves_no_worker_behind(main_job_run, data_root, tmp_path, loopback):
    """The scorer is killed (SIGKILL: no clean-up runs) between batches, its feature workers idle while it
    waits for a slow download: they must end with it, not wait forever holding their memory."""
    _, run_dir = main_job_run
    asked = []

    def slow(query):
        asked.append(time.monotonic())
        time.sleep(60)
        return 404, b""

    server = loopback(handlers={"/slow.jpg": slow})
    clips = sorted((data_root / "gtzan" / "audio" / "rock").glob("*.ogg"))[40:44]
    table = tmp_path / "tracks.csv"
    pd.DataFrame({"track_id": [c.stem for c in clips], "audio_path": [str(c) for c in clips],
                  "cover_url": ["", "", f"{server.url}/slow.jpg", f"{server.url}/slow.jpg"]}).to_csv(table, index=False)
    scorer = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "score.py"), f"model_dir={run_dir}",
                               f"input={table}", f"output={tmp_path / 'scores.csv'}", "n_jobs=2", "batch_size=2",
                               "progress=false", f"paths.root_dir={tmp_path}", "paths.cache_dir=null"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The first batch written (its features done) and the second's download pending: the workers idle.
    scores = tmp_path / "scores.csv"
    deadline = time.monotonic() + 180
    while (not asked or not scores.is_file() or scores.read_text().count("\n") < 3) \
            and time.monotonic() < deadline and scorer.poll() is None:
        time.sleep(0.2)
    assert asked and scores.read_text().count("\n") >= 3, "the scorer never reached its second batch"
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(scorer.pid)], capture_output=True,
                                                  text=True).stdout.split()]
    assert len(workers) >= 2, "the scorer never started its feature workers"
    os.kill(scorer.pid, signal.SIGKILL)
    scorer.wait(timeout=30)
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    for pid in alive:  # leave nothing running after the test either way
        os.kill(pid, signal.SIGKILL)
    assert alive == [], f"workers {alive} outlived the killed scorer"
