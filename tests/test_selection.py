"""Model choice on validation inside a run (engine.selection): the kept model is the best of the candidates
on validation, test labels take no part in the choice, the choice is recorded, and scoring uses it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.config import compose_config
from engine.predictions import probabilities, read_predictions, write_predictions
from engine.selection import candidate_configs, choose, validation_scores

CANDIDATES = ("mlp", "mlp_lbfgs", "logistic_weak", "logistic", "logistic_strong")


def test_choose_takes_the_lowest_validation_log_loss_or_the_highest_accuracy_first_listed_on_ties():
    scores = {"a": {"val_log_loss": 0.5, "val_accuracy": 0.7}, "b": {"val_log_loss": 0.4, "val_accuracy": 0.6},
              "c": {"val_log_loss": 0.4, "val_accuracy": 0.7}}
    assert choose(scores, "val_log_loss") == "b"
    assert choose(scores, "val_accuracy") == "a"


def test_validation_scores_read_the_validation_rows_alone(tmp_path):
    rng = np.random.default_rng(0)
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(40)], "split": ["val"] * 20 + ["test"] * 20,
                          "label": "a", "y": rng.integers(0, 2, 40), "group": ""})
    items["label"] = np.where(items["y"] == 0, "a", "b")
    proba = rng.dirichlet([1, 1], 40)
    write_predictions(tmp_path / "one.csv", items, proba, ["a", "b"])
    scrambled = items.copy()
    test = scrambled["split"] == "test"
    scrambled.loc[test, "y"] = 1 - scrambled.loc[test, "y"]
    scrambled_proba = proba.copy()
    scrambled_proba[test.to_numpy()] = rng.dirichlet([1, 1], int(test.sum()))
    write_predictions(tmp_path / "two.csv", scrambled, scrambled_proba, ["a", "b"])
    first, second = validation_scores(tmp_path / "one.csv"), validation_scores(tmp_path / "two.csv")
    assert first == second and first["n_val"] == 20
    val = items["split"] == "val"
    y = items.loc[val, "y"].to_numpy()
    assert first["val_log_loss"] == pytest.approx(-np.log(proba[val.to_numpy()][np.arange(20), y]).mean(), abs=1e-6)
    write_predictions(tmp_path / "none.csv", items[~val], proba[~val.to_numpy()], ["a", "b"])
    with pytest.raises(ValueError, match="no validation rows"):
        validation_scores(tmp_path / "none.csv")


def test_a_wrong_selection_config_is_refused_naming_the_key():
    cfg = compose_config(["audio=feature_select", "audio.select.by=test_accuracy"])
    with pytest.raises(ValueError, match="audio.select.by must be one of"):
        candidate_configs(cfg, "audio")
    cfg = compose_config(["audio=feature_select", "+audio.select.candidates.mlp.data={}"])
    with pytest.raises(ValueError, match=r"candidates.mlp: unknown key\(s\) \['data'\]"):
        candidate_configs(cfg, "audio")
    configs = candidate_configs(compose_config(["audio=feature_select"]), "audio")
    assert set(configs) == set(CANDIDATES)
    assert list(configs["logistic"].audio.model.hidden) == [] and configs["logistic"].audio.trainer.optimizer == "lbfgs"
    assert configs["mlp"].audio.model.hidden == compose_config(["audio=feature_mlp"]).audio.model.hidden
    assert all("select" not in c.audio for c in configs.values())


def _train_selected(root: Path, features_csv: Path | None = None) -> Path:
    from audio.train import train_audio

    overrides = [f"paths.root_dir={root}", "trainer.progress=false", "audio=feature_select",
                 "audio.trainer.max_epochs=20"]
    if features_csv is not None:
        overrides.append(f"audio.data.loader.csv_path={features_csv}")
    run_dir = root / "run" / "audio"
    train_audio(compose_config(overrides), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def selected_runs(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """The demo's audio branch with its candidates, on GTZAN's features, and again with every test clip's
    label moved to another genre of the label set (the same split, the same training and validation rows)."""
    root = tmp_path_factory.mktemp("selection")
    first = _train_selected(root / "first")
    split = pd.read_csv(json.loads((first / "metrics.json").read_text())["split_file"], dtype=str)
    test_ids = set(split.loc[split["split"] == "test", "item_id"])
    table = pd.read_csv(data_root / "gtzan" / "features_30_sec.csv")
    test = table["filename"].str.replace(".wav", "", regex=False).isin(test_ids)
    table.loc[test, "label"] = table.loc[test, "label"].map({"hiphop": "country", "country": "pop", "pop": "hiphop"}) \
        .fillna(table.loc[test, "label"])
    table.to_csv(root / "scrambled.csv", index=False)
    second = _train_selected(root / "second", root / "scrambled.csv")
    return first, second


def test_the_kept_model_is_the_best_candidate_on_validation_and_is_what_the_branch_folder_holds(selected_runs):
    run_dir, _ = selected_runs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    selection = metrics["selection"]
    assert selection["by"] == "val_log_loss" and set(selection["candidates"]) == set(CANDIDATES)
    log_losses = {}
    for name in CANDIDATES:  # recomputed here from each candidate's own predictions
        table, labels = read_predictions(run_dir / "candidates" / name / "predictions.csv")
        val = table[table["split"] == "val"]
        proba = probabilities(val, labels)
        log_losses[name] = -np.log(np.clip(proba[np.arange(len(val)), val["y"].astype(int)], 1e-12, 1)).mean()
        assert selection["candidates"][name]["val_log_loss"] == pytest.approx(log_losses[name], abs=1e-6)
    chosen = min(log_losses, key=log_losses.get)
    assert selection["chosen"] == chosen
    assert len({round(v, 6) for v in log_losses.values()}) == len(CANDIDATES)  # a real choice, not a tie
    for name in ("checkpoint.pt", "predictions.csv", "history.csv", "report.txt"):
        assert (run_dir / name).read_bytes() == (run_dir / "candidates" / chosen / name).read_bytes(), name
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["selection"] == selection
    assert metrics["accuracy"] == selection["candidates"][chosen]["test_accuracy"]
    assert metrics["reference_logreg"]["n"] == metrics["n"]  # the reference printed beside the chosen model


def test_changing_the_test_labels_changes_no_choice(selected_runs):
    first, second = (json.loads((run / "metrics.json").read_text())["selection"] for run in selected_runs)
    assert first["chosen"] == second["chosen"]
    for name in CANDIDATES:
        one, two = first["candidates"][name], second["candidates"][name]
        assert (one["val_log_loss"], one["val_accuracy"]) == (two["val_log_loss"], two["val_accuracy"])
    # The test labels did change: every candidate's test accuracy moved.
    assert all(first["candidates"][n]["test_accuracy"] != second["candidates"][n]["test_accuracy"] for n in CANDIDATES)


def test_scoring_the_branch_folder_uses_the_chosen_model(selected_runs, data_root):
    import torch

    from engine.inference import load_checkpoint
    from scoring.tracks import load_track_scorer, score_files

    run_dir, _ = selected_runs
    chosen = json.loads((run_dir / "metrics.json").read_text())["selection"]["chosen"]
    scorer = load_track_scorer(run_dir)
    state = scorer.audio_model.network.state_dict()
    for name in CANDIDATES:
        saved = load_checkpoint(run_dir / "candidates" / name / "checkpoint.pt")["model_state"]
        same = saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
        assert same == (name == chosen), name
    clip = str(data_root / "gtzan" / "audio" / "country" / "country.00002.ogg")
    scores = score_files(scorer, [""], [clip], cache_dir=None, device="cpu")
    assert np.isfinite(scores.fused).all() and scores.fused.sum() == pytest.approx(1.0)


def test_a_run_lists_every_choice_in_one_summary(selected_runs):
    from engine.selection import write_selection_summary

    run_dir, _ = selected_runs
    summary = write_selection_summary(run_dir.parent)
    chosen = json.loads((run_dir / "metrics.json").read_text())["selection"]["chosen"]
    rows = [line for line in summary.read_text().splitlines() if line.startswith("| audio |")]
    assert len(rows) == 1 and f"**{chosen}**" in rows[0]  # the candidates' own folders are not listed
    assert write_selection_summary(run_dir / "candidates" / chosen) is None


def test_the_cover_head_is_chosen_on_validation_between_the_head_and_the_logistic_probe(tmp_path, discogs_covers_csv):
    """covers=frozen_select (the main job's image branch) on 60 Discogs covers: the kept head is the candidate
    with the lower validation log-loss, and the cover model a scorer loads is that head."""
    import torch

    from covers.predict import load_cover_model
    from covers.train import train_covers
    from engine.inference import load_checkpoint

    csv = discogs_covers_csv(tmp_path / "covers.csv", 20)
    cfg = compose_config([f"paths.root_dir={tmp_path}", "trainer.progress=false", "covers=frozen_select",
                          f"covers.data.loader.csv_path={csv}", "covers.data.name=small", "split=random",
                          "trainer.max_epochs=5"])
    run_dir = tmp_path / "covers"
    train_covers(cfg, run_dir)
    selection = json.loads((run_dir / "metrics.json").read_text())["selection"]
    scores = {name: validation_scores(run_dir / "candidates" / name / "predictions.csv")["val_log_loss"]
              for name in ("head", "probe")}
    assert selection["chosen"] == min(scores, key=scores.get) and scores["head"] != scores["probe"]
    probe_card = json.loads((run_dir / "candidates" / "probe" / "model_card.json").read_text())
    assert probe_card["trainer"]["optimizer"] == "lbfgs"  # the probe was trained as its recipe says
    model, _ = load_cover_model(run_dir / "checkpoint.pt")
    head = model.network.head.state_dict()
    for name in ("head", "probe"):
        saved = load_checkpoint(run_dir / "candidates" / name / "checkpoint.pt")["model_state"]
        assert all(torch.equal(saved[k], head[k]) for k in saved) == (name == selection["chosen"]), name
