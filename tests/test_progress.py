import logging

import pytest

import engine.progress as progress
from engine.progress import progress_bar


@pytest.fixture
def in_a_log(monkeypatch, caplog):
    """Standard error is a file (CI, ``> run.log``), and every bar has run long enough to report."""
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "QUIET_FOR_S", 0.0)
    caplog.set_level(logging.INFO, logger="engine.progress")
    return lambda: [record.getMessage() for record in caplog.records if record.name == "engine.progress"]


def test_in_a_log_a_bar_logs_each_quarter_of_its_work_and_draws_nothing(in_a_log, capsys):
    for _ in progress_bar(range(100), desc="files", unit="file"):
        pass
    assert in_a_log() == [f"files: {n}/100 file in 00:00" for n in (25, 50, 75, 100)]
    assert capsys.readouterr().err == ""


def test_in_a_log_a_bar_stopped_early_logs_where_it_stopped_with_its_postfix(in_a_log, capsys):
    epochs = progress_bar(range(1, 101), desc="epochs", unit="epoch", total=100)
    for epoch in epochs:
        if epoch == 14:  # the trainer's early stop: the loop ends at the top of the next epoch
            break
        epochs.set_postfix(val_loss=f"{1 / epoch:.3f}")
    epochs.close()
    assert in_a_log() == ["epochs: 13/100 epoch in 00:00, val_loss=0.077"]
    assert capsys.readouterr().err == ""


def test_in_a_log_a_postfix_set_during_a_step_is_logged_with_that_step(in_a_log, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tqdm.std.time", lambda: clock[0])  # tqdm's clock, moved by hand
    monkeypatch.setattr(progress, "QUIET_FOR_S", 30.0)
    epochs = progress_bar(range(1, 5), desc="epochs", unit="epoch")
    for epoch in epochs:
        clock[0] += 17.0  # an epoch's work; the first ends inside the quiet 30 s
        epochs.set_postfix(epoch=epoch)  # the trainer's losses, set before the loop counts the epoch
    assert in_a_log() == ["epochs: 2/4 epoch in 00:34, epoch=2", "epochs: 3/4 epoch in 00:51, epoch=3",
                          "epochs: 4/4 epoch in 01:08, epoch=4"]


def test_in_a_log_nested_and_disabled_bars_say_nothing(in_a_log, capsys):
    for _ in progress_bar(range(10), desc="train 1", nested=True):
        pass
    for _ in progress_bar(range(10), desc="files", enabled=False):
        pass
    assert in_a_log() == [] and capsys.readouterr().err == ""


def test_short_work_in_a_log_says_nothing(monkeypatch, caplog, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="engine.progress")
    for _ in progress_bar(range(100), desc="files"):
        pass
    assert not [r for r in caplog.records if r.name == "engine.progress"] and capsys.readouterr().err == ""


def test_on_a_terminal_the_bar_is_drawn(monkeypatch, caplog, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    caplog.set_level(logging.INFO, logger="engine.progress")
    for _ in progress_bar(range(100), desc="files", unit="file"):
        pass
    drawn = capsys.readouterr().err
    assert "\r" in drawn and "files: 100%" in drawn and "100/100" in drawn
    assert not [r for r in caplog.records if r.name == "engine.progress"]
