import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from engine.inference import (CPU_IMAGE_BATCH, image_batch_size, load_checkpoint, predict_outputs, predict_proba,
                              read_checkpoint, save_checkpoint)
from engine.trainer import TrainerConfig, balanced_class_weights, fit, seed_everything


#: history.csv columns that measure time (they differ between identical runs).
TIMINGS = ["seconds", "train_items_per_s", "train_data_wait_share"]


def _blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[3, 0], [-3, 0], [0, 3]], dtype=np.float32)
    x = centres[y] + rng.normal(0, 0.7, (n, 2)).astype(np.float32)
    return TensorDataset(torch.tensor(x), torch.tensor(y))


def _model(seed=0):
    seed_everything(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def _config(**overrides):
    base = dict(lr=0.05, max_epochs=8, patience=3, batch_size=32, seed=1, progress=False, device="cpu")
    return TrainerConfig(**{**base, **overrides})


def _accuracy(model, dataset):
    proba = predict_proba(model, dataset, device="cpu")
    return float((proba.argmax(1) == dataset.tensors[1].numpy()).mean())


def test_tiny_model_learns_and_writes_run_files(tmp_path):
    model = _model()
    before = _accuracy(model, _blobs(seed=2))
    result = fit(model, _blobs(), _blobs(seed=1), _config(), tmp_path, metadata={"labels": ["a", "b", "c"]})
    after = _accuracy(model, _blobs(seed=2))
    assert after > 0.9 and after > before + 0.2
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == result.epochs_run and history["val_loss"].min() == pytest.approx(result.best_val_loss)
    assert (history["train_items_per_s"] > 0).all() and history["train_data_wait_share"].between(0, 1).all()
    record = load_checkpoint(tmp_path / "checkpoint.pt")
    assert record["labels"] == ["a", "b", "c"] and record["epoch"] == result.best_epoch


def test_same_seed_same_metrics(tmp_path):
    runs = []
    for name in ("a", "b"):
        model = _model(seed=3)
        fit(model, _blobs(), _blobs(seed=1), _config(optimizer="sgd", lr=0.1), tmp_path / name)
        runs.append(pd.read_csv(tmp_path / name / "history.csv").drop(columns=TIMINGS))
    pd.testing.assert_frame_equal(runs[0], runs[1])


def test_resume_continues_where_it_stopped(tmp_path):
    config = _config(max_epochs=6, patience=10)
    whole = _model(seed=4)
    fit(whole, _blobs(), _blobs(seed=1), config, tmp_path / "whole")

    interrupted = _model(seed=4)
    fit(interrupted, _blobs(), _blobs(seed=1), _config(max_epochs=6, patience=10, stop_after_epoch=2), tmp_path / "cut")
    assert len(pd.read_csv(tmp_path / "cut" / "history.csv")) == 2
    resumed = _model(seed=99)  # fresh weights: everything must come from last.pt
    result = fit(resumed, _blobs(), _blobs(seed=1), config, tmp_path / "cut")
    assert result.epochs_run == 6
    a = pd.read_csv(tmp_path / "whole" / "history.csv").drop(columns=TIMINGS)
    b = pd.read_csv(tmp_path / "cut" / "history.csv").drop(columns=TIMINGS)
    pd.testing.assert_frame_equal(a, b)
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)


def test_a_killed_training_leaves_no_model_to_score_until_it_is_resumed(tmp_path):
    """checkpoint.pt was written at every better epoch, so a run killed at epoch 3 of 50 left a model that
    scoring and evaluation took for the result. Now only last.pt is there until training ends."""
    from scoring.tracks import load_track_scorer

    run_dir = tmp_path / "audio"
    endless = "max_epochs=100_000, patience=100_000"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from test_trainer import _blobs, _config, _model\nfrom engine.trainer import fit\n"
            f"fit(_model(), _blobs(), _blobs(seed=1), _config({endless}), {str(run_dir)!r})\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "history.csv").is_file() and len(pd.read_csv(run_dir / "history.csv")) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, "training did not get going"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert (run_dir / "last.pt").is_file() and not (run_dir / "checkpoint.pt").exists()
    with pytest.raises(FileNotFoundError, match="did not finish.*to resume it"):
        read_checkpoint(run_dir / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        load_track_scorer(tmp_path)  # a main-job run folder whose audio branch was killed
    epochs_done = read_checkpoint(run_dir / "last.pt")["loop_state"]["epoch"]
    result = fit(_model(), _blobs(), _blobs(seed=1),
                 _config(max_epochs=100_000, patience=100_000, stop_after_epoch=epochs_done + 1), run_dir)
    assert result.epochs_run == epochs_done + 1
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == result.best_epoch


def test_resume_refuses_other_config(tmp_path):
    fit(_model(), _blobs(), _blobs(seed=1), _config(max_epochs=2), tmp_path)
    with pytest.raises(ValueError, match="another trainer config"):
        fit(_model(), _blobs(), _blobs(seed=1), _config(max_epochs=3), tmp_path)


def test_resume_from_a_file_written_before_a_setting_existed(tmp_path):
    # last.pt of a run started before trainer.monitor existed: no such setting, no best_score.
    fit(_model(), _blobs(), _blobs(seed=1), _config(max_epochs=3, stop_after_epoch=1), tmp_path)
    record = read_checkpoint(tmp_path / "last.pt")
    del record["config"]["monitor"], record["loop_state"]["best_score"]
    save_checkpoint(record, tmp_path / "last.pt")
    assert fit(_model(), _blobs(), _blobs(seed=1), _config(max_epochs=3), tmp_path).epochs_run == 3
    with pytest.raises(ValueError, match="another trainer config"):
        fit(_model(), _blobs(), _blobs(seed=1), _config(max_epochs=3, monitor="val_acc"), tmp_path)


def test_early_stopping_stops_and_keeps_best(tmp_path):
    # lr=0 never improves after epoch 1, so patience 2 stops at epoch 3.
    result = fit(_model(), _blobs(), _blobs(seed=1), _config(lr=0.0, patience=2, max_epochs=20), tmp_path)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def _label_noise(seed, share=0.3):
    """Close blobs with a share of random labels: validation loss and accuracy peak at different epochs."""
    x, y = _blobs(seed=seed).tensors
    rng = np.random.default_rng(seed + 10)
    flipped = rng.random(len(y)) < share
    y = y.clone()
    y[flipped] = torch.tensor(rng.integers(0, 3, flipped.sum()))
    return TensorDataset(x * 0.4, y)


def test_monitor_val_acc_keeps_the_first_most_accurate_epoch_and_stops_on_it(tmp_path):
    by_loss = fit(_model(), _label_noise(0), _label_noise(1), _config(max_epochs=12, patience=12), tmp_path / "loss")
    model = _model()
    by_acc = fit(model, _label_noise(0), _label_noise(1), _config(max_epochs=12, patience=3, monitor="val_acc"),
                 tmp_path / "acc")
    history = pd.read_csv(tmp_path / "acc" / "history.csv")
    first_best = int(history["val_acc"].idxmax()) + 1
    assert by_loss.best_epoch != first_best  # the two criteria disagree on this data
    assert by_acc.best_epoch == first_best and by_acc.stopped_early and by_acc.epochs_run == first_best + 3
    assert by_acc.best_val_loss == pytest.approx(history["val_loss"][first_best - 1])
    record = load_checkpoint(tmp_path / "acc" / "checkpoint.pt")
    assert record["epoch"] == first_best
    for name, value in model.state_dict().items():
        assert torch.equal(value, record["model_state"][name])
    assert _accuracy(model, _label_noise(1)) == pytest.approx(history["val_acc"].max())


def test_monitor_last_keeps_the_final_epoch_and_never_stops_early(tmp_path):
    model = _model()
    result = fit(model, _label_noise(0), _label_noise(1), _config(max_epochs=12, patience=2, monitor="last"), tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    best, bad_epochs = np.inf, 0
    for stop, loss in enumerate(history["val_loss"], start=1):  # where monitoring val_loss would have stopped
        best, bad_epochs = (loss, 0) if loss < best else (best, bad_epochs + 1)
        if bad_epochs == 2:
            break
    assert stop < 12
    assert result.epochs_run == 12 and result.best_epoch == 12 and not result.stopped_early
    last = read_checkpoint(tmp_path / "last.pt")["model_state"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, last[name])


def _overlapping_classes(n=240, n_features=5, seed=0):
    """Three classes whose means differ along a few directions, overlapping: a finite logistic-regression optimum."""
    means = np.random.default_rng(100).normal(0, 1, (3, n_features))  # the same classes in every sample
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, n_features)) + means[y]
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))


def test_lbfgs_finds_the_l2_penalised_logistic_regression_scikit_learn_finds(tmp_path):
    """Full-batch L-BFGS on a linear model minimises mean cross-entropy + weight_decay/2·‖W‖² (biases free):
    scikit-learn's LogisticRegression with C = 1 / (weight_decay · n) minimises the same objective."""
    from sklearn.linear_model import LogisticRegression

    train, val = _overlapping_classes(), _overlapping_classes(seed=1)
    weight_decay = 0.02
    seed_everything(0)
    model = nn.Linear(5, 3)
    result = fit(model, train, val, _config(optimizer="lbfgs", lr=1.0, scheduler="none", weight_decay=weight_decay,
                                            monitor="last", max_epochs=5), tmp_path)
    x, y = (t.numpy() for t in train.tensors)
    reference = LogisticRegression(C=1 / (weight_decay * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    ours = predict_proba(model, val, device="cpu")
    assert np.abs(ours - reference.predict_proba(val.tensors[0].numpy())).max() < 1e-3
    np.testing.assert_allclose(model.weight.detach().numpy(), reference.coef_, atol=1e-3)
    assert result.epochs_run == 5 and (pd.read_csv(tmp_path / "history.csv")["train_items_per_s"] > 0).all()
    # The penalty is what holds the weights back: without it they grow.
    unpenalised = TrainerConfig(optimizer="lbfgs", lr=1.0, scheduler="none", weight_decay=0.0, max_epochs=5,
                                monitor="last", progress=False, device="cpu")
    seed_everything(0)
    free = nn.Linear(5, 3)
    fit(free, train, val, unpenalised, tmp_path / "free")
    assert np.abs(free.weight.detach().numpy()).sum() > np.abs(model.weight.detach().numpy()).sum()


def test_an_lbfgs_run_resumed_after_an_epoch_ends_where_the_uninterrupted_one_does(tmp_path):
    """The optimiser's curvature pairs travel in last.pt: a run sliced after epoch 2 ends with the same weights."""
    def model():
        seed_everything(0)
        return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))

    recipe = dict(optimizer="lbfgs", lr=1.0, scheduler="none", weight_decay=0.01, monitor="last", max_epochs=4)
    train, val = _overlapping_classes(), _overlapping_classes(seed=1)
    whole = model()
    fit(whole, train, val, _config(**recipe), tmp_path / "whole")
    fit(model(), train, val, _config(**recipe, stop_after_epoch=2), tmp_path / "sliced")
    resumed = model()
    fit(resumed, train, val, _config(**recipe), tmp_path / "sliced")
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_lbfgs_refuses_a_model_whose_loss_is_random(tmp_path):
    config = _config(optimizer="lbfgs", lr=1.0, scheduler="none")
    with pytest.raises(ValueError, match=r"dropout at \['2'\]"):
        fit(_model(), _blobs(), _blobs(seed=1), config, tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_class_weights_and_label_smoothing_change_training(tmp_path):
    weights = balanced_class_weights([0, 0, 0, 1], 3)
    assert weights == pytest.approx([4 / 9, 4 / 3, 0.0])
    plain = fit(_model(), _blobs(), _blobs(seed=1), _config(max_epochs=2), tmp_path / "p")
    smoothed = fit(_model(), _blobs(), _blobs(seed=1), _config(max_epochs=2, label_smoothing=0.2,
                                                              class_weights=[1.0, 2.0, 1.0]), tmp_path / "s")
    assert plain.best_val_loss != pytest.approx(smoothed.best_val_loss)


@pytest.mark.parametrize("bad", [dict(optimizer="adam"), dict(scheduler="step"), dict(max_epochs=0), dict(monitor="acc"),
                                 dict(label_smoothing=1.0), dict(batchnorm="sync"), dict(optimizer="lbfgs"),
                                 dict(optimizer="lbfgs", scheduler="none", lr_decay=0.5)])
def test_bad_trainer_config(bad):
    with pytest.raises(ValueError):
        _config(**bad)


def test_balanced_class_weights_from_config():
    from omegaconf import OmegaConf

    from engine.settings import trainer_config

    cfg = OmegaConf.create({"trainer": {"lr": 0.1, "class_weights": None}})
    config = trainer_config(cfg, {"class_weights": "balanced"}, train_targets=[0, 0, 0, 1], n_classes=3)
    assert config.class_weights == pytest.approx([4 / 9, 4 / 3, 0.0])
    with pytest.raises(ValueError, match="class_weights"):
        trainer_config(cfg, {"class_weights": "inverse"}, train_targets=[0], n_classes=1)


def test_class_absent_from_training_does_not_break_validation(tmp_path):
    # Class 2 never occurs in training (weight 0) but fills validation batches on its own.
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    train = TensorDataset(x[:30], torch.tensor([0, 1] * 15))
    val = TensorDataset(x[30:], torch.tensor([2] * 8 + [0, 1]))
    weights = balanced_class_weights([0, 1] * 15, 3)
    assert weights[2] == 0.0
    config = TrainerConfig(lr=0.01, max_epochs=2, batch_size=8, progress=False, class_weights=weights)
    result = fit(nn.Linear(4, 3), train, val, config, tmp_path)
    assert np.isfinite(result.history["val_loss"]).all() and np.isfinite(result.history["train_loss"]).all()


def test_fastai_recipe_freezes_then_trains_every_group_with_discriminative_rates_and_resizes(tmp_path):
    """freeze_epochs: only the head moves in epoch 1; lr_decay: rates fall towards the input;
    resize_schedule: the images are resized per epoch."""
    from covers.backbones import create_model
    from covers.predict import CoverImages

    seed_everything(0)
    model = create_model("small_cnn", 3, pretrained=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    y = np.arange(24) % 3
    seen_sizes = []

    class Recording(CoverImages):
        def set_size(self, size):
            seen_sizes.append(size)
            super().set_size(size)

    train, val = Recording(images, y), Recording(images[:6], y[:6])
    config = _config(lr=0.01, max_epochs=3, patience=5, freeze_epochs=1, lr_decay=0.5,
                     resize_schedule=[[16, 1], [32, 2]])
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    fit(model, train, val, config.__class__(**{**config.__dict__, "max_epochs": 1}), tmp_path / "one")
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, start[name])}
    assert moved and all(name.startswith("head") for name in moved)
    assert seen_sizes[:2] == [16, 16]  # train and validation resized in epoch 1
    model = create_model("small_cnn", 3, pretrained=False)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    fit(model, train, val, config, tmp_path / "three")
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters() if n.startswith("backbone"))
    assert seen_sizes[2:] == [16, 16, 32, 32, 32, 32]
    assert all(p.requires_grad for p in model.parameters())
    from engine.trainer import _build_optimizer

    rates = [group["lr"] for group in _build_optimizer(model, config).param_groups]
    assert rates == pytest.approx([0.005, 0.01])


def test_class_weights_change_the_loss_and_the_trained_model_without_label_smoothing(tmp_path):
    """Balanced weights on an imbalanced set (smoothing off): another validation loss, other weights, and
    more of the rare class recalled; M4's precision weights reach the loss the same way."""
    from omegaconf import OmegaConf

    from engine.settings import trainer_config

    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(270, int), np.ones(30, int)]
    x = np.where(y[:, None] == 1, 0.6, -0.6) + rng.normal(0, 1.0, (300, 2))
    data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    val = TensorDataset(torch.tensor(x[::3], dtype=torch.float32), torch.tensor(y[::3]))

    def train(weights, name):
        seed_everything(0)
        model = nn.Linear(2, 2)
        result = fit(model, data, val, _config(lr=0.05, max_epochs=6, patience=10, class_weights=weights,
                                               label_smoothing=0.0), tmp_path / name)
        recall = (predict_proba(model, data, device="cpu").argmax(1)[y == 1] == 1).mean()
        return result.history["val_loss"].to_numpy(), model.weight.detach().clone(), recall

    plain = train(None, "plain")
    balanced = train(balanced_class_weights(y, 2), "balanced")
    assert not np.allclose(plain[0], balanced[0]) and not torch.equal(plain[1], balanced[1])
    assert balanced[2] > plain[2] + 0.2  # the rare class is found far more often
    cfg = OmegaConf.create({"trainer": {"lr": 0.05}})
    precision_weights = trainer_config(cfg, {"class_weights": [0.5, 1.5]}).class_weights
    weighted = train(list(precision_weights), "precision")
    assert not np.allclose(plain[0], weighted[0]) and not torch.equal(plain[1], weighted[1])


def test_frozen_batchnorm_keeps_its_statistics_while_the_rest_trains(tmp_path):
    def with_batchnorm():
        seed_everything(0)
        return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    frozen, trained = with_batchnorm(), with_batchnorm()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    fit(frozen, _blobs(), _blobs(seed=1), _config(max_epochs=2, batchnorm="frozen"), tmp_path / "frozen")
    fit(trained, _blobs(), _blobs(seed=1), _config(max_epochs=2), tmp_path / "trained")
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        torch.testing.assert_close(frozen.state_dict()[key], before[key])
        assert not torch.equal(trained.state_dict()[key], before[key])
    assert not torch.equal(frozen.state_dict()["1.weight"], before["1.weight"])  # its scale still learns


def test_global_batches_in_one_process_are_a_shuffled_dataloaders_batches():
    """The order is the one a shuffled DataLoader with the same generator draws (the recorded results
    were trained on it), and asking for the length (tqdm does) draws nothing."""
    from torch.utils.data import DataLoader

    from engine.trainer import GlobalBatches

    dataset = TensorDataset(torch.arange(23))
    ours_generator, reference_generator = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ours = DataLoader(dataset, batch_sampler=GlobalBatches(23, 5, ours_generator, training=True),
                      generator=ours_generator)
    reference = DataLoader(dataset, batch_size=5, shuffle=True, generator=reference_generator)
    assert len(ours) == len(reference) == 5
    # One epoch: the trainer seeds a new generator per epoch (RandomSampler draws a second, empty
    # permutation at the end of each pass, so a reused generator would part ways after the first).
    assert [b[0].tolist() for b in ours] == [b[0].tolist() for b in reference]


def test_channels_last_trains_the_same_model_in_the_other_memory_layout(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 96)
    x = rng.normal(0, 1, (96, 3, 12, 12)).astype(np.float32) + y[:, None, None, None].astype(np.float32)
    images = TensorDataset(torch.tensor(x), torch.tensor(y))

    def conv_model():
        seed_everything(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    default, last = conv_model(), conv_model()
    fit(default, images, images, _config(max_epochs=3, optimizer="sgd", lr=0.05), tmp_path / "default")
    fit(last, images, images, _config(max_epochs=3, optimizer="sgd", lr=0.05, channels_last=True), tmp_path / "last")
    assert last[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not default[0].weight.is_contiguous(memory_format=torch.channels_last)
    for key, value in default.state_dict().items():
        torch.testing.assert_close(last.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    histories = [pd.read_csv(tmp_path / name / "history.csv").drop(columns=TIMINGS) for name in ("default", "last")]
    pd.testing.assert_frame_equal(*histories, rtol=1e-4)


def test_every_trainer_option_can_be_set_from_the_command_line():
    """Each TrainerConfig field is in the composed trainer and in each branch's, so `trainer.<field>=…` and
    `audio.trainer.<field>=…` need no `+`; the run's defaults are the dataclass's (they live once)."""
    from dataclasses import asdict, fields

    from data.config import compose_config

    cfg = compose_config(["trainer.monitor=val_acc", "audio.trainer.monitor=last", "covers.trainer.patience=3"])
    names = {field.name for field in fields(TrainerConfig)}
    assert set(cfg.trainer) == set(cfg.audio.trainer) == set(cfg.covers.trainer) == names
    assert (cfg.trainer.monitor, cfg.audio.trainer.monitor, cfg.covers.trainer.patience) == ("val_acc", "last", 3)
    defaults = compose_config([]).trainer
    assert {k: v for k, v in asdict(TrainerConfig()).items() if k != "seed"} == \
        {k: v for k, v in defaults.items() if k != "seed"} and defaults.seed == compose_config([]).seed


def test_in_a_log_the_epochs_line_counts_every_epoch_that_ran(tmp_path, monkeypatch, caplog):
    """Stopped after epoch 2 of 8 (a slice) and resumed to its early stop: each run's last line counts its epochs."""
    import logging

    import engine.progress as progress

    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "QUIET_FOR_S", 0.0)
    caplog.set_level(logging.INFO, logger="engine.progress")

    def epoch_lines():
        lines = [r.getMessage() for r in caplog.records if r.name == "engine.progress"]
        caplog.clear()
        return lines

    fit(_model(), _blobs(), _blobs(seed=1), _config(progress=True, stop_after_epoch=2), tmp_path)
    last = epoch_lines()[-1]
    sliced = pd.read_csv(tmp_path / "history.csv")
    assert last.startswith("epochs: 2/8 epoch in ") and f"val_loss={sliced['val_loss'].iloc[1]:.3f}" in last
    result = fit(_model(), _blobs(), _blobs(seed=1), _config(progress=True), tmp_path)
    last = epoch_lines()[-1]
    history = pd.read_csv(tmp_path / "history.csv")
    assert last.startswith(f"epochs: {result.epochs_run}/8 epoch in ")
    assert f"val_loss={history['val_loss'].iloc[-1]:.3f}" in last


def test_predicting_in_channels_last_gives_the_same_probabilities():
    seed_everything(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    images = TensorDataset(torch.randn(20, 3, 16, 16), torch.zeros(20, dtype=torch.int64))
    default = predict_proba(model, images, batch_size=8, device="cpu")
    last = predict_proba(model, images, batch_size=8, device="cpu", images=True)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(last, default, atol=1e-6)


def test_an_image_network_on_the_cpu_predicts_in_small_passes_with_the_probabilities_of_one_pass():
    seed_everything(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    passes: list[int] = []
    model[0].register_forward_pre_hook(lambda _, inputs: passes.append(len(inputs[0])))
    x = torch.randn(10, 3, 16, 16)
    images = TensorDataset(x, torch.zeros(10, dtype=torch.int64))
    with torch.no_grad():
        whole, embedded = torch.softmax(model(x), dim=1).numpy(), model[:-1](x).numpy()
    passes.clear()
    proba = predict_proba(model, images, batch_size=8, device="cpu", images=True)
    assert passes == [CPU_IMAGE_BATCH, CPU_IMAGE_BATCH, 2]  # 10 items in passes of 4: the last one partial
    np.testing.assert_allclose(proba, whole, atol=1e-6)
    passes.clear()
    features = predict_outputs(model[:-1], images, batch_size=8, device="cpu", images=True)
    assert passes == [CPU_IMAGE_BATCH, CPU_IMAGE_BATCH, 2]
    np.testing.assert_allclose(features, embedded, atol=1e-6)
    # Other models, and image networks on another device, take the caller's batch whole.
    passes.clear()
    predict_proba(model, images, batch_size=8, device="cpu")
    assert passes == [8, 2]
    assert image_batch_size(torch.device("cuda"), 256) == 256 and image_batch_size(torch.device("cpu"), 2) == 2
