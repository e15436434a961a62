"""Sweeps through Hydra launchers: a parallel local sweep (joblib) for real, the SLURM config composed."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_joblib_sweep_runs_in_parallel_and_summarises(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "-m", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "branches=[audio]", "audio=feature_linear",
                             "audio.trainer.max_epochs=5", "seed=1,2", "trainer.progress=false",
                             f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # the joblib launcher ran the sweep, two at a time
    summary = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(sweep)],
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr
    runs = pd.read_csv(sweep / "runs.csv")
    assert sorted(runs["seed"]) == [1, 2] and (runs["status"] == "ok").all()
    assert runs["accuracy"].nunique() == 2  # two seeds, two trained models
    # Each run's validation accuracy is its kept epoch's, so a setting can be chosen from the table.
    for run in runs.itertuples():
        kept = json.loads((Path(run.run) / "audio" / "metrics.json").read_text())["training"]["best_epoch"]
        assert run.val_accuracy == pytest.approx(pd.read_csv(Path(run.run) / "audio" / "history.csv")["val_acc"][kept - 1])
    assert "| val_accuracy | accuracy |" in summary.stdout
    # Both runs, written by two processes at once, are one MLflow experiment named after the sweep's folder.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"sweep {sweep}")  # outside the outputs folder: its full path
    tracked = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["seed"] for r in tracked) == ["1", "2"]
    assert sorted(r.data.metrics["audio_only_accuracy"] for r in tracked) == sorted(runs["accuracy"])


def test_slurm_launcher_config_composes_onto_submitit():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "hydra/launcher=slurm",
                             "hydra.launcher.partition=gpu", "--cfg", "hydra", "--package", "hydra.launcher"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    for line in ("partition: gpu", "gpus_per_node: 1", "timeout_min: 240"):
        assert line in result.stdout, line


@pytest.mark.slow
def test_a_job_that_fails_fails_alone_and_the_summary_says_why(tmp_path):
    """A config mistake in one job of a sweep (lr=abc) used to end the sweep before the next job ran."""
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "-m", "branches=[audio]",
                             "audio=feature_linear", "audio.trainer.max_epochs=5", "audio.trainer.lr=abc,1e-3",
                             "trainer.progress=false", f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0  # the sweep as a whole failed…
    assert result.stderr.count("error: trainer.lr must be float, got 'abc'") == 1
    assert (sweep / "1" / "results.json").is_file()  # …but its other job ran to the end
    summary = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(sweep)],
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr
    runs = pd.read_csv(sweep / "runs.csv", dtype=str).set_index("audio.trainer.lr")
    assert runs.loc["abc", "status"].startswith("failed: error: trainer.lr must be float, got 'abc'")
    assert runs.loc["0.001", "status"] == "ok"  # Hydra writes 1e-3 so
    assert "1 run(s) failed" in summary.stdout and "trainer.lr must be float" in summary.stdout


@pytest.mark.slow
def test_a_sweep_where_no_run_finished_is_summarised_as_that(tmp_path):
    """The summary used to die with pandas' KeyError when no run had results."""
    sweep = tmp_path / "sweep"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "-m", "branches=[audio]",
                    "audio.trainer.lr=abc,xyz", f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"],
                   capture_output=True, text=True, timeout=300, cwd=tmp_path)
    summary = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(sweep)],
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode == 2 and f"error: no run of {sweep} finished; 2 run(s) failed" in summary.stderr
    assert "got 'xyz'" in summary.stderr and "Traceback" not in summary.stderr
    assert len(pd.read_csv(sweep / "runs.csv")) == 2
