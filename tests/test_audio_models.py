import numpy as np
import pandas as pd
import pytest
import torch

from audio.extract import MEL_FRAMES, extract_log_mels
from audio.io import load_audio
from audio.mel import MelParams, MelSpectrogram, librosa_log_mel
from audio.models import HybridNet, MelCNN, build_audio_model
from audio.feature_mlp import FeatureMLP
from data.gtzan import FEATURE_COLUMNS, SEGMENT_HOP_SAMPLES, SEGMENT_SAMPLES, segment_items
from engine.inference import mean_by_group


@pytest.fixture(scope="module")
def two_clips(data_root):
    paths = [data_root / "gtzan/audio_lossless" / g / f"{g}.00000.flac" for g in ("blues", "metal")]
    return [load_audio(p).y for p in paths]


def test_mel_front_end_equals_librosa(two_clips):
    batch = torch.from_numpy(np.stack([y[: 10 * 22050] for y in two_clips]))
    ours = MelSpectrogram()(batch).numpy()
    for row, y in zip(ours, two_clips):
        reference = librosa_log_mel(y[: 10 * 22050])
        assert row.shape == reference.shape == (128, 1 + 10 * 22050 // 512)
        np.testing.assert_allclose(row, reference, rtol=1e-4, atol=1e-4)


def test_mel_power_equals_librosa_relative(two_clips):
    import librosa

    y = two_clips[0][: 5 * 22050]
    ours = MelSpectrogram().power(torch.from_numpy(y)).numpy()[0]
    theirs = librosa.feature.melspectrogram(y=y, sr=22050)
    assert np.abs(ours - theirs).max() <= 1e-4 * theirs.max()


def test_mel_other_parameters_follow_librosa(two_clips):
    params = MelParams(n_fft=1024, hop_length=256, n_mels=64, fmax=8000.0, top_db=None)
    y = two_clips[1][:22050]
    np.testing.assert_allclose(MelSpectrogram(params)(torch.from_numpy(y)).numpy()[0], librosa_log_mel(y, params),
                               rtol=1e-4, atol=1e-4)


def test_log_mels_of_segments_are_cached_and_failures_listed(data_root, tmp_path):
    clip = str(data_root / "gtzan/audio_lossless/rock/rock.00000.flac")
    items = pd.DataFrame({"item_id": ["r.0", "r.9", "r.10", "corrupt"],
                          "audio_path": [clip, clip, clip, str(data_root / "gtzan/audio/jazz/jazz.00054.wav")],
                          "segment": [0, 9, 10, -1]})
    kept, mels = extract_log_mels(items, cache_dir=tmp_path, progress=False)
    assert list(kept.items["item_id"]) == ["r.0", "r.9"]
    assert set(kept.problems["item_id"]) == {"r.10", "corrupt"}
    assert mels.shape == (2, 128, MEL_FRAMES)
    y = load_audio(clip).y
    np.testing.assert_allclose(mels[1], librosa_log_mel(y[9 * SEGMENT_HOP_SAMPLES: 9 * SEGMENT_HOP_SAMPLES + SEGMENT_SAMPLES])[:, :MEL_FRAMES],
                               rtol=1e-4, atol=1e-4)
    _, again = extract_log_mels(items.iloc[:2], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.rglob("*.npy"))) == 2
    np.testing.assert_array_equal(again, mels)


def test_segment_items_inherit_clip_split():
    clips = pd.DataFrame({"item_id": ["a", "b"], "label": ["x", "y"], "group": ["a", "b"], "split": ["train", "test"],
                          "segment": -1})
    segments = segment_items(clips, 10)
    assert len(segments) == 20
    assert segments.groupby("clip_item_id")["split"].nunique().max() == 1
    assert list(segments["item_id"][:2]) == ["a.0", "a.1"] and segments["segment"].max() == 9
    with pytest.raises(ValueError):
        segment_items(segments, 10)


def test_mean_by_group_averages_probabilities():
    proba = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    groups, y, mean = mean_by_group(["a", "a", "b"], [0, 0, 1], proba)
    assert groups == ["a", "b"] and list(y) == [0, 1]
    np.testing.assert_allclose(mean, [[0.6, 0.4], [0.2, 0.8]])
    with pytest.raises(ValueError):
        mean_by_group(["a", "a"], [0, 1], proba[:2])


@pytest.mark.parametrize("kind", ["mel_cnn", "hybrid"])
def test_audio_models_forward_backward(kind):
    torch.manual_seed(0)
    cnn = MelCNN(3, channels=(4, 8))
    model = cnn if kind == "mel_cnn" else HybridNet(cnn, FeatureMLP(57, 3, hidden=(16,)), 3, hidden=8)
    mel = torch.randn(5, 128, 128) * 20 - 40
    inputs = mel if kind == "mel_cnn" else (mel, torch.randn(5, 57))
    logits = model(inputs)
    assert logits.shape == (5, 3)
    logits.sum().backward()
    # The hybrid reads its branches' embeddings; their own classifier heads stay unused.
    unused = {id(p) for part in (model.cnn.head, model.mlp.head) for p in part.parameters()} if kind == "hybrid" else set()
    assert all(p.grad is not None for p in model.parameters() if id(p) not in unused)


def test_log_variances_read_the_variance_columns_on_a_log_scale():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0, 3, (40, len(FEATURE_COLUMNS))).astype(np.float32)
    variances = [i for i, name in enumerate(FEATURE_COLUMNS) if name.endswith("_var")]
    x[0, variances[0]] = 0.0  # a silent band: finite on the log scale
    logged = build_audio_model({"kind": "feature_mlp", "hidden": [8], "log_variances": True}, ["a", "b"])
    plain = build_audio_model({"kind": "feature_mlp", "hidden": [8]}, ["a", "b"])
    assert logged.log_mask.nonzero().flatten().tolist() == variances and len(variances) == 28
    plain.load_state_dict(logged.state_dict())  # same parameters and stored buffers: the log set is config
    logged.fit_standardiser(x).eval()
    by_hand = x.astype(np.float64)
    by_hand[:, variances] = np.log(by_hand[:, variances] + 1e-12)
    plain.fit_standardiser(by_hand).eval()
    np.testing.assert_allclose(logged.mean.numpy(), by_hand.mean(0), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ours = logged(torch.from_numpy(x))
        theirs = plain(torch.from_numpy(by_hand.astype(np.float32)))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_scikit_learn_grid_chooses_on_validation_and_reads_the_branch_inputs(data_root, tmp_path, monkeypatch, capsys):
    """scripts/audio_sklearn_grid.py: every fit's accuracies, the best mean validation setting chosen per
    family, its test accuracy and the reference's equal to scikit-learn refitted here on log-scale inputs."""
    import importlib.util
    import json
    from pathlib import Path

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    script = Path(__file__).resolve().parent.parent / "scripts" / "audio_sklearn_grid.py"
    spec = importlib.util.spec_from_file_location("audio_sklearn_grid", script)
    grid_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid_script)
    monkeypatch.setattr(grid_script, "GRID", {"logreg": [{"C": 0.01}, {"C": 1.0}],
                                              "mlp": [{"hidden_layer_sizes": (8,), "alpha": 0.1},
                                                      {"hidden_layer_sizes": (8,), "alpha": 30.0}]})
    monkeypatch.chdir(tmp_path)  # splits and caches under the working directory, as for the main job
    out = tmp_path / "grid"
    assert grid_script.main(["--out", str(out), "--seeds", "1,2", "audio.model.log_variances=true"]) == 0
    grid = pd.read_csv(out / "grid.csv")
    assert len(grid) == 2 + 2 * 2 and set(grid.loc[grid["family"] == "mlp", "seed"]) == {1, 2}
    summary = json.loads((out / "summary.json").read_text())
    for family in ("logreg", "mlp"):
        mean_val = grid[grid["family"] == family].groupby("setting", sort=False)["val_accuracy"].mean()
        chosen = summary["chosen"][family]
        assert chosen["val_accuracy"] == pytest.approx(mean_val.max())
        fits = grid[(grid["family"] == family) & (grid["setting"] == json.dumps(chosen["setting"]))]
        assert [s["test_accuracy"] for s in chosen["per_seed"]] == pytest.approx(fits["test_accuracy"].tolist())
        assert all((out / f"{family}-s{s['seed']}" / "predictions.csv").is_file() for s in chosen["per_seed"])
    # The default labels (rap, country, pop) of GTZAN's fault-filtered split, variances on a log scale, by hand.
    table = pd.read_csv(data_root / "gtzan" / "features_30_sec.csv")
    table["item_id"] = table["filename"].str.replace(".wav", "", regex=False)
    table["label"] = table["label"].replace({"hiphop": "rap"})
    rows = table.merge(pd.read_csv(summary["data"]["split_file"])[["item_id", "split"]], on="item_id")
    rows = rows[rows["label"].isin(["rap", "country", "pop"])]
    x = rows[FEATURE_COLUMNS].to_numpy(np.float64)
    variances = [name.endswith("_var") for name in FEATURE_COLUMNS]
    x[:, variances] = np.log(x[:, variances] + 1e-12)
    part = {p: (rows["split"] == p).to_numpy() for p in ("train", "val", "test")}
    assert summary["n"] == {p: int(m.sum()) for p, m in part.items()}
    scaler = StandardScaler().fit(x[part["train"]])
    labels = rows["label"].to_numpy()
    chosen_logreg = summary["chosen"]["logreg"]["per_seed"][0]
    for c, expected in ((1.0, summary["reference"]["test_accuracy"]),
                        (summary["chosen"]["logreg"]["setting"]["C"], chosen_logreg["test_accuracy"])):
        fitted = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x[part["train"]]), labels[part["train"]])
        assert fitted.score(scaler.transform(x[part["test"]]), labels[part["test"]]) == pytest.approx(expected)
    assert chosen_logreg["minus_reference"]["difference"] == pytest.approx(
        chosen_logreg["test_accuracy"] - summary["reference"]["test_accuracy"])
    # The validation log-loss the grid records is scikit-learn's, and --choose-by takes its lowest mean.
    from sklearn.metrics import log_loss

    fitted = LogisticRegression(C=0.01, max_iter=5000).fit(scaler.transform(x[part["train"]]), labels[part["train"]])
    by_hand = log_loss(labels[part["val"]], fitted.predict_proba(scaler.transform(x[part["val"]])),
                       labels=fitted.classes_)
    assert grid.loc[grid["setting"] == json.dumps({"C": 0.01}), "val_log_loss"].item() == pytest.approx(by_hand)
    assert grid_script.main(["--out", str(out), "--seeds", "1,2", "--choose-by", "val_log_loss",
                             "audio.model.log_variances=true"]) == 0
    by_loss = json.loads((out / "summary.json").read_text())
    assert by_loss["chosen_by"] == "val_log_loss"
    for family in ("logreg", "mlp"):
        mean_loss = grid[grid["family"] == family].groupby("setting", sort=False)["val_log_loss"].mean()
        assert by_loss["chosen"][family]["setting"] == json.loads(mean_loss.idxmin())
    # A model that does not read the per-clip features is refused with the reason.
    with pytest.raises(SystemExit) as refused:
        grid_script.main(["--out", str(tmp_path / "mel"), "audio=mel_cnn"])
    assert refused.value.code == 2 and "compares per-clip feature models" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # a config that does not compose: one line, not a traceback
        grid_script.main(["--out", str(tmp_path / "bad"), "audio=no_such_model"])
    assert refused.value.code == 2 and "no_such_model" in capsys.readouterr().err.splitlines()[0]
