"""k-fold cross-validation, cross-fitted fusion and calibration."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent


def test_expected_calibration_error_equals_a_hand_computation(tmp_path):
    from engine.report import expected_calibration_error
    from fusion.calibration import plot_reliability

    # Confidences 0.9, 0.8 (bin 9 with 10 bins is (0.8, 0.9]: 0.9 only; 0.8 falls in (0.7, 0.8]), 0.6, 0.55.
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1])  # right, wrong, right, right
    # bins: 0.9 → |1 − 0.9| · 1/4; 0.8 → |0 − 0.8| · 1/4; 0.6 → |1 − 0.6| · 1/4; 0.55 → |1 − 0.55| · 1/4
    expected = (0.1 + 0.8 + 0.4 + 0.45) / 4
    assert expected_calibration_error(proba, y, n_bins=10) == pytest.approx(expected)
    # Two items sharing a bin: |mean accuracy − mean confidence| weighted by the bin's share.
    shared = np.array([[0.62, 0.38], [0.68, 0.32]])
    assert expected_calibration_error(shared, np.array([0, 1]), n_bins=10) == pytest.approx(abs(0.5 - 0.65))
    path = plot_reliability([("a", proba, y), ("b", shared, np.array([0, 1]))], tmp_path / "r.png")
    assert path.stat().st_size > 5000


def test_temperature_scaling_keeps_the_argmax_and_fixes_overconfidence():
    from engine.report import expected_calibration_error, log_loss
    from fusion.calibration import TemperatureScaling

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    logits = rng.normal(size=(2000, 3))
    logits[np.arange(2000), y] += 1.0
    honest = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    overconfident = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)
    scaler = TemperatureScaling().fit(overconfident[:1000], y[:1000])
    assert 3.0 < scaler.temperature_ < 5.0
    fixed = scaler.transform(overconfident[1000:])
    assert (fixed.argmax(1) == overconfident[1000:].argmax(1)).all()
    assert log_loss(fixed, y[1000:]) < log_loss(overconfident[1000:], y[1000:])
    assert expected_calibration_error(fixed, y[1000:]) < 0.5 * expected_calibration_error(overconfident[1000:], y[1000:])
    assert np.allclose(fixed, honest[1000:], atol=0.05)


def test_kfold_split_tests_every_item_once_and_no_group_straddles(covers_loaded):
    from data.labels import apply_label_set
    from data.splits import SplitSpec, make_split

    items, _ = apply_label_set(covers_loaded.items[covers_loaded.items["source"] == "spotify"],
                               ["rap", "country", "jazz"])
    split = make_split(items, SplitSpec(protocol="kfold", folds=5, seed=3, val_fraction=0.15))
    for fold in range(5):
        assert set(split.loc[split["fold"] == fold, f"split_{fold}"]) == {"test"}
        assert (split.loc[split["fold"] != fold, f"split_{fold}"] != "test").all()
    # The raw key (the Spotify artist) never straddles the folds, nor the parts of any fold.
    keyed = split.merge(items[["item_id", "artist_id"]], on="item_id")
    assert keyed.groupby("artist_id")["fold"].nunique().max() == 1
    for fold in range(5):
        assert keyed.groupby("artist_id")[f"split_{fold}"].nunique().max() == 1
    assert split["fold"].value_counts().min() > 0.1 * len(split)


def test_cross_fitting_inside_gtzans_artist_filtered_split_is_refused_before_any_training(tmp_path):
    # GTZAN's groups are clips; inner folds of its artist-filtered training part would share artists.
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}", "trainer.progress=false",
         "fusion.fit_on=crossfit", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fault_filtered" in result.stderr and "share artists" in result.stderr
    assert not list(tmp_path.rglob("*.csv"))  # refused before any split was made or branch trained

    # The inner folds themselves refuse too (a driver that sets inner_fold without scripts/run.py's check).
    from data.config import branch_split_spec, compose_config

    cfg = compose_config([f"paths.root_dir={tmp_path}", "fusion.fit_on=crossfit"])
    OmegaConf.set_struct(cfg, False)
    cfg.inner_fold = {"fold": 0, "folds": 5}
    with pytest.raises(ValueError, match="share artists"):
        branch_split_spec(cfg, cfg.audio)
    branch_split_spec(cfg, cfg.covers)  # the covers' own group split admits inner folds


def test_pooled_synthetic_folds_resample_the_audio_clips_that_recur_across_folds(tmp_path):
    from fusion.compare import compare_modalities
    from fusion.folds import pool_folds

    rng = np.random.default_rng(0)
    labels, clips = ["a", "b"], [f"clip{j}" for j in range(12)]
    y_clip = np.arange(12) % 2
    # Both folds pair their own 12 held-out covers with the same 12 audio clips (as GTZAN's own split does).
    audio = np.eye(2)[np.where(rng.random(12) < 0.7, y_clip, 1 - y_clip)] * 0.8 + 0.1
    fold_dirs, fold_rows = [], []
    for fold in range(2):
        pairs = pd.DataFrame({"fused_id": [f"cover{fold}-{j}+{c}" for j, c in enumerate(clips)],
                              "audio_item_id": clips, "cover_item_id": [f"cover{fold}-{j}" for j in range(12)]})
        folder = tmp_path / f"fold-{fold}"
        folder.mkdir()
        pairs.to_csv(folder / "pairs_pairing-synthetic.csv", index=False)
        cover = rng.dirichlet([1, 1], size=12)
        fold_dirs.append(folder)
        fold_rows.append(compare_modalities(folder, y_clip, cover, audio, (cover + audio) / 2, labels, "synthetic",
                                            "fused (mean)", item_ids=pairs["fused_id"]))
    pooled = pool_folds(tmp_path, fold_dirs, fold_rows, labels, "synthetic")
    audio_row = next(m for name, m in pooled.items() if name.startswith("audio-only"))
    assert audio_row["n"] == 24 and audio_row["n_groups"] == 12  # 24 pairs, 12 clips resampled whole
    report = (tmp_path / "pooled" / "comparison_pairing-synthetic.md").read_text()
    assert "Intervals resampling the 12 audio clips" in report and "recurs across folds" in report

    (fold_dirs[1] / "pairs_pairing-synthetic.csv").write_text("fused_id,audio_item_id,cover_item_id\n")
    with pytest.raises(ValueError, match="not in the folds' pairs files"):
        pool_folds(tmp_path, fold_dirs, fold_rows, labels, "synthetic")


#: Outer folds of the k-fold run and inner folds of its cross-fitting: with 2 of either, this small
#: table leaves a part too few artists to hold out a validation set (a clear error, not a run).
FOLDS, INNER_FOLDS = 3, 3


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kfold")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={folder}", "trainer.progress=false",
         "data=spotify_albums", "audio=descriptor_select", "labels=rap_country", "split=kfold", f"split.folds={FOLDS}",
         "fusion.fit_on=crossfit", f"fusion.crossfit_folds={INNER_FOLDS}", "audio.trainer.max_epochs=20"],
        capture_output=True, text=True, timeout=900, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1].split("Run folder: ")[1]), result.stdout


def test_kfold_run_predicts_every_track_out_of_fold_exactly_once(kfold_run):
    run_dir, stdout = kfold_run
    assert "fused (weighted, cross-fitted) · pairing: real" in stdout
    assert "fused (weighted, validation-fitted) · pairing: real" in stdout
    folds = json.loads((run_dir / "folds.json").read_text())
    assert folds["folds"] == FOLDS and (run_dir / "folds.md").is_file()
    assert len(folds["per_fold_mean_std"]["audio-only (descriptor_select)"]["accuracy"]["folds"]) == FOLDS
    # The audio model is chosen on validation in every outer and inner fold, and the chosen one is what the
    # fold's folder holds (what fusion read).
    for audio in [run_dir / f"fold-{k}" / "audio" for k in range(FOLDS)] + \
            [run_dir / f"fold-{k}" / "crossfit" / f"fold-{j}" / "audio" for k in range(FOLDS) for j in range(INNER_FOLDS)]:
        selection = json.loads((audio / "metrics.json").read_text())["selection"]
        assert set(selection["candidates"]) == {"mlp", "mlp_lbfgs", "logistic_weak", "logistic", "logistic_strong"}
        chosen = audio / "candidates" / selection["chosen"]
        assert (audio / "checkpoint.pt").read_bytes() == (chosen / "checkpoint.pt").read_bytes()
        assert (audio / "predictions.csv").read_text() == (chosen / "predictions.csv").read_text()
    pooled = pd.read_csv(run_dir / "pooled" / "comparison_items.csv", dtype={"item_id": str})
    assert pooled["item_id"].is_unique
    split_file = json.loads((run_dir / "fold-0" / "covers" / "metrics.json").read_text())["split_file"]
    split = pd.read_csv(split_file, dtype={"item_id": str})
    assert set(pooled["item_id"]) == set(split["item_id"])  # every labelled track, once
    per_fold = [set(pd.read_csv(run_dir / f"fold-{k}" / "fusion" / "comparison_items.csv", dtype={"item_id": str})
                    ["item_id"]) for k in range(FOLDS)]
    assert [len(s) for s in per_fold] == [int((split["fold"] == k).sum()) for k in range(FOLDS)]
    for k, tested in enumerate(per_fold):
        assert tested == set(split.loc[split["fold"] == k, "item_id"])
    # Cross-fitting: the inner folds split the outer fold's training tracks only, each held out once.
    for k in range(FOLDS):
        outer_train = set(split.loc[split[f"split_{k}"] == "train", "item_id"])
        inner = [pd.read_csv(run_dir / f"fold-{k}" / "crossfit" / f"fold-{j}" / "audio" / "predictions.csv",
                             dtype={"item_id": str}) for j in range(INNER_FOLDS)]
        held = pd.concat([t[t["split"] == "test"] for t in inner])["item_id"]
        assert held.is_unique and set(held) == outer_train


def test_the_cross_fitted_head_never_sees_the_test_items(kfold_run, tmp_path):
    """Scramble every test probability of both branches: the cross-fitted head stays the same."""
    from fusion.heads import FUSION_HEAD
    from fusion.run import run_fusion

    run_dir, _ = kfold_run
    fold = run_dir / "fold-0"
    crossfit = [(fold / "crossfit" / f"fold-{j}" / "covers", fold / "crossfit" / f"fold-{j}" / "audio") for j in range(INNER_FOLDS)]
    cfg = OmegaConf.create({"seed": 42, "fusion": {"method": "logreg", "pairing": "auto", "weight": None,
                                                   "fit_on": "crossfit", "calibrate": "temperature"}})
    run_fusion(cfg, tmp_path / "first", fold / "covers", fold / "audio", crossfit_dirs=crossfit)
    rng = np.random.default_rng(7)
    for branch in ("covers", "audio"):
        (tmp_path / branch).mkdir()
        table = pd.read_csv(fold / branch / "predictions.csv", dtype={"item_id": str})
        test = table["split"] == "test"
        columns = [c for c in table.columns if c.startswith("p_")]
        table.loc[test, columns] = rng.dirichlet(np.ones(len(columns)), test.sum())
        table.to_csv(tmp_path / branch / "predictions.csv", index=False)
    run_fusion(cfg, tmp_path / "second", tmp_path / "covers", tmp_path / "audio", crossfit_dirs=crossfit)
    first, second = (json.loads((tmp_path / d / FUSION_HEAD).read_text()) for d in ("first", "second"))
    assert first["state"] == second["state"] and first["fit_on"] == "crossfit"
    assert first["state"]["temperatures_"] != [1.0, 1.0]
    assert (tmp_path / "first" / "reliability_pairing-real.png").stat().st_size > 5000
