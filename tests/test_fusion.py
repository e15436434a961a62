import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from fusion.heads import create_fusion_head, fusion_inputs
from fusion.pairing import modality_counts, real_pairs, synthetic_pairs
from fusion.run import run_fusion
from engine.sweep import collect_runs, summarise

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["rap", "country", "pop"]


def _branch_outputs(prefix: str, n_per_cell: dict[str, int], seed: int, strength: float) -> pd.DataFrame:
    """Fake predictions.csv of a branch: val/test items of three genres, probabilities leaning to the truth."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in n_per_cell.items():
        for y, label in enumerate(LABELS):
            for i in range(n):
                logits = rng.normal(size=3)
                logits[y] += strength
                p = np.exp(logits) / np.exp(logits).sum()
                rows.append({"item_id": f"{prefix}{split}{label}{i}", "split": split, "label": label, "y": y,
                             "predicted": LABELS[int(p.argmax())], **{f"p_{c}": p[j] for j, c in enumerate(LABELS)}})
    return pd.DataFrame(rows)


def _write_branches(folder, n_val: int, n_test: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fake cover and audio branch outputs written as ``folder/{covers,audio}/predictions.csv``."""
    covers = _branch_outputs("c", {"val": n_val, "test": n_test}, 0, 1.0)
    audio = _branch_outputs("a", {"val": n_val, "test": n_test}, 1, 1.5)
    for name, table in (("covers", covers), ("audio", audio)):
        (folder / name).mkdir()
        table.to_csv(folder / name / "predictions.csv", index=False)
    return covers, audio


def test_synthetic_pairs_never_cross_splits_or_genres():
    covers = _branch_outputs("c", {"val": 30, "test": 40}, 0, 1.0)
    audio = _branch_outputs("a", {"val": 10, "test": 12}, 1, 2.0)
    pairs = synthetic_pairs(covers, audio, seed=3)
    info_c, info_a = covers.set_index("item_id"), audio.set_index("item_id")
    paired = pairs[(pairs["cover_item_id"] != "") & (pairs["audio_item_id"] != "")]
    assert len(paired) == 3 * (10 + 12)
    for row in paired.itertuples():
        assert info_c.loc[row.cover_item_id, "split"] == info_a.loc[row.audio_item_id, "split"] == row.split
        assert info_c.loc[row.cover_item_id, "label"] == info_a.loc[row.audio_item_id, "label"] == row.label
    assert sorted(pairs["cover_item_id"][pairs["cover_item_id"] != ""]) == sorted(covers["item_id"])
    assert modality_counts(pairs) == {"both": 66, "cover_only": 144, "audio_only": 0}
    pd.testing.assert_frame_equal(pairs, synthetic_pairs(covers, audio, seed=3))  # fixed seed → same pairs
    assert not pairs.equals(synthetic_pairs(covers, audio, seed=4))


def test_real_pairs_join_on_item_id_and_keep_single_modality_items():
    covers = _branch_outputs("", {"val": 3, "test": 3}, 0, 1.0)
    audio = covers.iloc[:10].copy()
    pairs = real_pairs(covers, audio)
    assert modality_counts(pairs) == {"both": 10, "cover_only": len(covers) - 10, "audio_only": 0}
    audio.loc[audio.index[0], "split"] = "test" if audio["split"].iloc[0] == "val" else "val"
    with pytest.raises(ValueError, match="different split"):
        real_pairs(covers, audio)


@pytest.mark.parametrize("method", ["weighted", "mean", "logreg", "mlp"])
def test_missing_modality_is_scored_by_the_branch_it_has(method):
    rng = np.random.default_rng(0)
    p_cover, p_audio = rng.dirichlet(np.ones(3), 60), rng.dirichlet(np.ones(3), 60)
    y = rng.integers(0, 3, 60)
    head = create_fusion_head(method, random_state=0).fit(fusion_inputs(p_cover, p_audio), y)
    p_cover[:5] = np.nan
    p_audio[5:10] = np.nan
    out = head.predict_proba(fusion_inputs(p_cover, p_audio))
    np.testing.assert_allclose(out[:5], p_audio[:5])
    np.testing.assert_allclose(out[5:10], p_cover[5:10])
    assert np.isfinite(out).all() and np.allclose(out.sum(1), 1)


def test_weighted_fusion_learns_to_trust_the_better_branch():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    good = np.eye(3)[y] * 0.8 + 0.2 / 3
    noise = rng.dirichlet(np.ones(3), 300)
    head = create_fusion_head("weighted").fit(fusion_inputs(noise, good), y)
    assert head.weight_ <= 0.1


def test_fusion_never_sees_test_items_while_fitting(tmp_path):
    covers, audio = _write_branches(tmp_path, 20, 20)
    cfg = OmegaConf.create({"seed": 0, "fusion": {"method": "logreg", "pairing": "auto", "weight": None}})
    run_fusion(cfg, tmp_path / "first", tmp_path / "covers", tmp_path / "audio")
    # Scramble every test probability of both branches: the fitted head must not change, so the
    # fused validation predictions stay identical.
    for name, table in (("covers", covers), ("audio", audio)):
        test = table["split"] == "test"
        table.loc[test, [f"p_{c}" for c in LABELS]] = np.random.default_rng(9).dirichlet(np.ones(3), test.sum())
        table.to_csv(tmp_path / name / "predictions.csv", index=False)
    run_fusion(cfg, tmp_path / "second", tmp_path / "covers", tmp_path / "audio")
    first, second = (pd.read_csv(tmp_path / d / "predictions.csv") for d in ("first", "second"))
    val = first["split"] == "val"
    pd.testing.assert_frame_equal(first[val], second[val])
    assert not first[~val].equals(second[~val])
    metrics = json.loads((tmp_path / "first" / "metrics_pairing-synthetic.json").read_text())
    assert metrics["pairing"] == "synthetic" and metrics["comparison_items"] == 60
    assert (tmp_path / "first" / "confusions_pairing-synthetic.png").is_file()


def test_sweep_summary_aggregates_a_fake_sweep(tmp_path):
    accuracies = {("weighted", 1): 0.6, ("weighted", 2): 0.8, ("logreg", 1): 0.5, ("logreg", 2): 0.7}
    for number, ((method, seed), accuracy) in enumerate(accuracies.items()):
        run = tmp_path / str(number)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"fusion.method={method}", f"seed={seed}"]))
        row = {"n": 10, "accuracy": accuracy, "balanced_accuracy": accuracy, "macro_f1": accuracy / 2}
        (run / "results.json").write_text(json.dumps({"fused": row}))
    broken = tmp_path / "9" / ".hydra"
    broken.mkdir(parents=True)
    (broken / "overrides.yaml").write_text(yaml.safe_dump(["fusion.method=mlp", "seed=1"]))
    runs = collect_runs(tmp_path)
    assert (runs["status"] != "ok").sum() == 1
    summary = summarise(runs).set_index("fusion.method")
    assert summary.loc["weighted", "accuracy_mean"] == pytest.approx(0.7)
    assert summary.loc["weighted", "accuracy_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert summary.loc["logreg", "macro_f1_mean"] == pytest.approx(0.3)
    assert int(summary.loc["logreg", "accuracy_count"]) == 2
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize_sweep.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "0.700 ± 0.141" in result.stdout and "1 run(s) failed" in result.stdout


def test_compare_runs_reports_paired_difference_on_common_items(tmp_path):
    a = _branch_outputs("x", {"test": 30}, 0, 3.0)
    b = a.copy()
    b["predicted"] = "rap"  # a constant guesser: right on one third
    for name, table in (("a", a), ("b", b.iloc[5:])):
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "predictions.csv", index=False)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), str(tmp_path / "a"),
                             str(tmp_path / "b"), "--out", str(tmp_path / "cmp.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "cmp.json").read_text())
    common = a.iloc[5:]
    expected = (common["predicted"] == common["label"]).mean() - (common["label"] == "rap").mean()
    assert report["n_common_test_items"] == 85
    assert report["first_minus_other"][str(tmp_path / "b")]["difference"]["difference"] == pytest.approx(expected)

    # A run committed with its predictions gzip-compressed (results/) compares as the same run.
    import gzip

    from engine.predictions import compare_runs

    (tmp_path / "b_gz").mkdir()
    (tmp_path / "b_gz" / "predictions.csv.gz").write_bytes(gzip.compress((tmp_path / "b" / "predictions.csv").read_bytes()))
    same = compare_runs([tmp_path / "b", tmp_path / "b_gz"])
    assert same["n_common_test_items"] == 85 and same["first_minus_other"][str(tmp_path / "b_gz")]["difference"] \
        == {"difference": 0.0, "ci95": [0.0, 0.0]}


def test_a_new_fusion_head_needs_only_its_registration(tmp_path):
    """A toy head registered under a new name runs the whole comparison and reloads for scoring."""
    from fusion.heads import FUSION_HEADS, FUSION_HEAD, FusionHead, load_fusion_head

    @FUSION_HEADS.register("max_toy")
    class MaxFusion(FusionHead):
        """Elementwise maximum, renormalised; nothing to fit."""

        def _fit(self, p_cover, p_audio, y) -> None:
            pass

        def _combine(self, p_cover, p_audio):
            best = np.maximum(p_cover, p_audio)
            return best / best.sum(1, keepdims=True)

    try:
        covers, audio = _write_branches(tmp_path, 10, 10)
        cfg = OmegaConf.create({"seed": 0, "fusion": {"method": "max_toy", "pairing": "auto", "weight": None}})
        rows = run_fusion(cfg, tmp_path / "fusion", tmp_path / "covers", tmp_path / "audio")
        assert "fused (max_toy) · pairing: synthetic" in rows
        fused = pd.read_csv(tmp_path / "fusion" / "predictions.csv")
        pairs = fused[(fused["cover_item_id"].notna()) & (fused["audio_item_id"].notna())].iloc[0]
        p_c = covers.set_index("item_id").loc[pairs["cover_item_id"], [f"p_{c}" for c in LABELS]].to_numpy(float)
        p_a = audio.set_index("item_id").loc[pairs["audio_item_id"], [f"p_{c}" for c in LABELS]].to_numpy(float)
        expected = np.maximum(p_c, p_a) / np.maximum(p_c, p_a).sum()
        np.testing.assert_allclose(pairs[[f"p_{c}" for c in LABELS]].to_numpy(float), expected)
        reloaded = load_fusion_head(tmp_path / "fusion" / FUSION_HEAD)
        assert isinstance(reloaded, MaxFusion)
    finally:
        FUSION_HEADS._entries.pop("max_toy")


@pytest.mark.parametrize("method", ["weighted", "mean", "logreg", "mlp"])
def test_fusion_heads_are_scikit_learn_estimators_saved_as_plain_data(method, tmp_path):
    from sklearn.base import clone

    from fusion.heads import load_fusion_head, save_fusion_head

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 80)
    p_cover = 0.6 * np.eye(3)[y] + 0.4 * rng.dirichlet(np.ones(3), 80)
    p_audio = rng.dirichlet(np.ones(3), 80)
    x = fusion_inputs(p_cover, p_audio)
    head = create_fusion_head(method, random_state=0).fit(x, y)
    assert list(head.classes_) == [0, 1, 2] and head.n_features_in_ == 6
    twin = clone(head)
    assert twin.get_params() == head.get_params() and not hasattr(twin, "classes_")
    np.testing.assert_allclose(twin.fit(x, y).predict_proba(x), head.predict_proba(x))
    save_fusion_head(tmp_path / "head.json", method, head)
    json.loads((tmp_path / "head.json").read_text())  # plain JSON, no pickle
    np.testing.assert_allclose(load_fusion_head(tmp_path / "head.json").predict_proba(x), head.predict_proba(x))
    assert 0 <= head.score(x, y) <= 1


def test_stacking_heads_match_scikit_learn_own_predictions():
    """The plain-array forward passes equal the fitted scikit-learn models' predict_proba."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from fusion.heads import _log_probabilities

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)
    p_cover, p_audio = 0.5 * np.eye(3)[y] + 0.5 * rng.dirichlet(np.ones(3), 90), rng.dirichlet(np.ones(3), 90)
    features = _log_probabilities(p_cover, p_audio)
    for method, reference in (("logreg", LogisticRegression(max_iter=5000)),
                              ("mlp", MLPClassifier((16,), alpha=1e-2, max_iter=2000, random_state=0))):
        ours = create_fusion_head(method, random_state=0).fit(fusion_inputs(p_cover, p_audio), y)
        np.testing.assert_allclose(ours.predict_proba(fusion_inputs(p_cover, p_audio)),
                                   reference.fit(features, y).predict_proba(features), atol=1e-10)
