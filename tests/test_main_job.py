import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_main(tmp_path, *overrides, timeout=600):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
                             "trainer.progress=false", *overrides],
                            capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run folder:" in result.stdout
    run_line = next(line for line in result.stdout.splitlines() if line.startswith("Run folder: "))
    return result.stdout, Path(run_line.split("Run folder: ")[1])


def test_audio_branch_writes_a_complete_run_folder(tmp_path):
    # GTZAN audio: its artist-filtered split by default. Variances on a log scale, for the model and its reference.
    stdout, run_dir = _run_main(tmp_path, "branches=[audio]", "audio=feature_mlp", "audio.trainer.max_epochs=30",
                                "audio.model.log_variances=true")
    assert "audio-only (feature_mlp)" in stdout
    audio = run_dir / "audio"
    for name in ("history.csv", "metrics.json", "report.txt", "confusion.png", "checkpoint.pt",
                 "model_card.json", "predictions.csv", "reference_logreg/metrics.json"):
        assert (audio / name).is_file(), name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((audio / "metrics.json").read_text())
    assert metrics["protocol"] == "predefined" and metrics["labels"] == ["rap", "country", "pop"]
    # Fault-filtered test set: the rap/country/pop clips among its 290.
    assert metrics["n"] == sum(metrics["split_counts"][c]["test"] for c in metrics["labels"])
    assert metrics["reference_logreg"]["n"] == metrics["n"]
    card = json.loads((audio / "model_card.json").read_text())
    assert card["machine"]["cpu_cores"] and card["metrics"]["ci95"]["accuracy"][0] <= metrics["accuracy"]
    # The standardisation the checkpoint carries was fitted on the training rows alone.
    import numpy as np
    import pandas as pd

    from data.gtzan import FEATURE_COLUMNS
    from engine.inference import load_checkpoint

    state = load_checkpoint(audio / "checkpoint.pt")["model_state"]
    table = pd.read_csv(Path(card["data_loader"]["csv_path"]))
    table["item_id"] = table["filename"].str.replace(".wav", "", regex=False)
    split = pd.read_csv(metrics["split_file"])
    rows = table.merge(split[["item_id", "split"]], on="item_id")
    rows = rows[rows["label"].replace({"hiphop": "rap"}).isin(metrics["labels"])]
    variances = [name.endswith("_var") for name in FEATURE_COLUMNS]
    logged = rows[FEATURE_COLUMNS].to_numpy(np.float64)
    logged[:, variances] = np.log(logged[:, variances] + 1e-12)
    train = logged[(rows["split"] == "train").to_numpy()]
    np.testing.assert_allclose(state["mean"].numpy(), train.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["scale"].numpy(), train.std(0), rtol=1e-5)
    assert not np.allclose(state["mean"].numpy(), logged.mean(0), rtol=1e-3)
    # The reference read the same log-scale inputs: scikit-learn refitted here agrees.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = rows["label"].replace({"hiphop": "rap"}).to_numpy()
    is_test = (rows["split"] == "test").to_numpy()
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    reference.fit(train, labels[(rows["split"] == "train").to_numpy()])
    assert metrics["reference_logreg"]["log_columns"] == sum(variances) == 28
    assert metrics["reference_logreg"]["accuracy"] == pytest.approx(
        (reference.predict(logged[is_test]) == labels[is_test]).mean(), abs=1.01 / metrics["n"])
    # The printed accuracy is the test rows' of predictions.csv, recomputed here.
    predictions = pd.read_csv(audio / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    assert metrics["accuracy"] == pytest.approx((test["predicted"] == test["label"]).mean())


def test_the_full_batch_audio_recipe_keeps_its_last_epoch_and_refuses_dropout(tmp_path):
    import pandas as pd

    stdout, run_dir = _run_main(tmp_path, "branches=[audio]", "audio=feature_mlp_lbfgs", "audio.trainer.max_epochs=3")
    assert "audio-only (feature_mlp_lbfgs)" in stdout
    metrics = json.loads((run_dir / "audio" / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "audio" / "history.csv")
    assert metrics["trainer"]["optimizer"] == "lbfgs" and metrics["reference_logreg"]["log_columns"] == 28
    assert metrics["training"]["best_epoch"] == len(history) == 3
    assert metrics["training"]["val_acc"] == pytest.approx(history["val_acc"].iloc[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["audio-only (feature_mlp_lbfgs)"]["val_accuracy"] == metrics["training"]["val_acc"]
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
                              "trainer.progress=false", "branches=[audio]", "audio=feature_mlp_lbfgs",
                              "audio.model.dropout=0.5"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert refused.returncode == 2 and "needs a deterministic loss" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr


def test_main_job_prints_image_audio_and_fused_rows(main_job_run):
    """The default main job (audio + covers + fusion) on a 150-cover subset of the Discogs covers."""
    stdout, run_dir = main_job_run
    for row in ("image-only (efficientnet_lite0_frozen) · pairing: synthetic",
                "audio-only (feature_select) · pairing: synthetic", "fused (weighted) · pairing: synthetic"):
        assert row in stdout
    assert (run_dir / "fusion" / "confusions_pairing-synthetic.png").is_file()
    assert str(run_dir / "fusion" / "confusions_pairing-synthetic.png") in stdout
    assert f"Models chosen on validation: {run_dir / 'selections.md'}" in stdout  # the demo's audio is chosen so
    assert "| audio | **" in (run_dir / "selections.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert len({m["n"] for m in results.values()}) == 1  # the rows share their test items
    # The printed rows recomputed from what the branches and fusion wrote: the test pairs with both
    # modalities, each branch's own probabilities, the fused head's.
    import pandas as pd

    pairs = pd.read_csv(run_dir / "fusion" / "pairs_pairing-synthetic.csv", keep_default_na=False)
    test = pairs[(pairs["split"] == "test") & (pairs["cover_item_id"] != "") & (pairs["audio_item_id"] != "")]
    fused = pd.read_csv(run_dir / "fusion" / "predictions.csv", keep_default_na=False).set_index("fused_id")
    covers = pd.read_csv(run_dir / "covers" / "predictions.csv", dtype={"item_id": str}).set_index("item_id")
    audio = pd.read_csv(run_dir / "audio" / "predictions.csv", dtype={"item_id": str}).set_index("item_id")
    expected = {"image-only": (covers.loc[test["cover_item_id"], "predicted"].to_numpy() == test["label"].to_numpy()),
                "audio-only": (audio.loc[test["audio_item_id"], "predicted"].to_numpy() == test["label"].to_numpy()),
                "fused": (fused.loc[test["fused_id"], "predicted"].to_numpy() == test["label"].to_numpy())}
    for name, correct in expected.items():
        row = next(m for key, m in results.items() if key.startswith(name))
        assert row["n"] == len(test) and row["accuracy"] == pytest.approx(correct.mean()), name
    for branch in ("audio", "covers"):
        assert (run_dir / branch / "checkpoint.pt").is_file() and (run_dir / branch / "predictions.csv").is_file()


@pytest.mark.slow
def test_a_run_whose_output_is_a_file_logs_lines_instead_of_redrawing_bars(tmp_path):
    """Progress on (the default), standard error captured: no carriage-return redraws, no bar text."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
                             "branches=[audio]", "audio=feature_mlp", "audio.trainer.max_epochs=30"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "\r" not in output and "it/s" not in output and "epochs:" not in output
    assert "audio-only (feature_mlp)" in result.stdout


def test_wrong_config_key_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}", "+trainer.lrr=0.1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode != 0 and "unknown key(s) ['lrr']" in result.stderr


@pytest.mark.slow
def test_a_run_stopped_after_an_epoch_continues_in_its_folder(tmp_path, discogs_covers_csv):
    """trainer.stop_after_epoch ends a call early; the same hydra.run.dir continues from last.pt to the
    history and model an uninterrupted run gives (its first epochs are kept, not trained again)."""
    import pandas as pd

    csv = discogs_covers_csv(tmp_path / "small.csv", 20)
    common = ["branches=[covers]", "covers.mode=frozen", f"covers.data.loader.csv_path={csv}", "covers.data.name=small",
              "trainer.max_epochs=4", "trainer.patience=10", "trainer.lr=1e-3", "split=random"]
    _, whole = _run_main(tmp_path, *common, f"hydra.run.dir={tmp_path / 'whole'}")
    _run_main(tmp_path, *common, "trainer.stop_after_epoch=2", f"hydra.run.dir={tmp_path / 'sliced'}")
    first_slice = pd.read_csv(tmp_path / "sliced" / "covers" / "history.csv")
    assert len(first_slice) == 2
    _run_main(tmp_path, *common, f"hydra.run.dir={tmp_path / 'sliced'}")
    continued = pd.read_csv(tmp_path / "sliced" / "covers" / "history.csv")
    pd.testing.assert_frame_equal(continued.iloc[:2], first_slice)  # the same rows, timings included: not re-run
    timings = ["seconds", "train_items_per_s", "train_data_wait_share"]
    uninterrupted = pd.read_csv(whole / "covers" / "history.csv")
    pd.testing.assert_frame_equal(continued.drop(columns=timings), uninterrupted.drop(columns=timings))
    for name in ("metrics.json",):
        a, b = (json.loads((d / "covers" / name).read_text()) for d in (whole, tmp_path / "sliced"))
        assert a["accuracy"] == b["accuracy"] and a["confusion"] == b["confusion"]


def test_a_misspelt_split_key_is_a_clear_error_naming_the_known_ones(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
                             "branches=[audio]", "+split.tset_fraction=0.3"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "unknown key(s) ['tset_fraction']" in result.stderr
    assert "test_fraction" in result.stderr and "Traceback" not in result.stderr



def test_the_main_job_is_tracked_in_mlflow_as_its_run_folder_says(main_job_run):
    """MLflow (on by default) read back through its client: the logged numbers are the run folder's."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    _, run_dir = main_job_run
    outputs = run_dir.parents[2]  # outputs/run/<date>/<time>
    client = MlflowClient(tracking_uri=f"sqlite:///{outputs / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["run_dir"] == str(run_dir)
    logged = run.data.metrics
    results = json.loads((run_dir / "results.json").read_text())
    for role, start in (("majority", "majority"), ("image_only", "image-only"), ("audio_only", "audio-only"),
                        ("fused", "fused")):
        row = next(m for name, m in results.items() if name.startswith(start))
        assert logged[f"{role}_accuracy"] == row["accuracy"], role
        assert [logged[f"{role}_accuracy_low"], logged[f"{role}_accuracy_high"]] == row["ci95"]["accuracy"], role
        assert logged[f"{role}_macro_f1"] == row["macro_f1"], role
    for branch in ("audio", "covers"):
        metrics = json.loads((run_dir / branch / "metrics.json").read_text())
        assert logged[f"{branch}/accuracy"] == metrics["accuracy"]
        assert logged[f"{branch}/balanced_accuracy_high"] == metrics["ci95"]["balanced_accuracy"][1]
    assert not any(key.startswith("audio/candidates") for key in logged)  # only the kept model's numbers
    history = pd.read_csv(run_dir / "audio" / "history.csv")
    points = client.get_metric_history(run.info.run_id, "audio/val_loss")
    assert [(p.step, p.value) for p in sorted(points, key=lambda p: p.step)] == \
        list(zip(history["epoch"], history["val_loss"]))
    params = run.data.params
    assert params["audio.trainer.max_epochs"] == "30" and params["seed"] == "42" and params["tracking.backend"] == "mlflow"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "fusion")}
    assert {"fusion/confusions_pairing-synthetic.png", "fusion/metrics_pairing-synthetic.json"} <= artifacts


def test_tracking_that_fails_is_a_warning_and_tracking_none_writes_no_store(tmp_path):
    """The run folder is the record: an unusable store costs a warning, not the run; tracking=none opens none."""
    def run(*overrides):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
                               "trainer.progress=false", "branches=[audio]", "audio=feature_linear",
                               "audio.trainer.max_epochs=2", *overrides],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    untracked = run("tracking=none")
    assert untracked.returncode == 0, untracked.stderr[-3000:]
    assert "MLflow" not in untracked.stdout + untracked.stderr and not (tmp_path / "outputs" / "mlflow.db").exists()
    unwritable = tmp_path / "not-a-folder"
    unwritable.write_text("a file where the store's folder would be")
    failed = run(f"tracking.uri=sqlite:///{unwritable}/mlflow.db")
    assert failed.returncode == 0, failed.stderr[-3000:]
    assert "MLflow tracking failed" in failed.stdout and "is complete" in failed.stdout  # Hydra logs to stdout
    run_dir = Path(next(line for line in failed.stdout.splitlines() if line.startswith("Run folder: "))[12:])
    assert (run_dir / "results.json").is_file() and (run_dir / "audio" / "metrics.json").is_file()
    misspelt = run("tracking.backend=off")  # refused before anything trains
    assert misspelt.returncode == 2 and "tracking.backend must be one of ['mlflow', 'none']" in misspelt.stderr
