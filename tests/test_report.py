import json

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report, f1_score,
                             precision_recall_fscore_support)

from engine.report import (evaluate_predictions, format_classification_report, mcnemar,
                           paired_accuracy_difference, write_json, write_report)

LABELS = ["rap", "country", "pop", "jazz"]


def _predictions(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 4, n))
    y_pred[y_pred == 3] = 2  # jazz is never predicted: precision 0/0 must follow sklearn
    return y_true, y_pred


def test_metrics_equal_sklearn():
    y_true, y_pred = _predictions()
    m = evaluate_predictions(y_true, y_pred, LABELS)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    for i, label in enumerate(LABELS):
        c = m["per_class"][label]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))


def test_text_report_matches_sklearn_layout():
    y_true, y_pred = _predictions(seed=1)
    ours = format_classification_report(evaluate_predictions(y_true, y_pred, LABELS))
    theirs = classification_report(y_true, y_pred, target_names=LABELS, zero_division=0)
    squash = lambda text: [line.split() for line in text.splitlines() if line.strip()]
    assert squash(ours)[: len(squash(theirs))] == squash(theirs)


def test_bootstrap_interval_brackets_estimate_and_is_seeded():
    y_true, y_pred = _predictions(seed=2)
    a = evaluate_predictions(y_true, y_pred, LABELS, seed=5)
    b = evaluate_predictions(y_true, y_pred, LABELS, seed=5)
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = a["ci95"][name]
        assert low < a[name] < high and high - low < 0.2
    assert a["ci95"] == b["ci95"]
    # Width shrinks roughly with sqrt(n): 16x the items → about 1/4 the width.
    big = evaluate_predictions(np.tile(y_true, 16), np.tile(y_pred, 16), LABELS)
    ratio = np.diff(big["ci95"]["accuracy"])[0] / np.diff(a["ci95"]["accuracy"])[0]
    assert 0.15 < ratio < 0.4


def test_write_report_files(tmp_path):
    y_true, y_pred = _predictions()
    write_report(tmp_path, evaluate_predictions(y_true, y_pred, LABELS), title="t", extra={"protocol": "group"})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["protocol"] == "group" and len(saved["confusion"]) == 4
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert "macro avg" in (tmp_path / "report.txt").read_text()


def test_paired_tests():
    y = np.zeros(100, dtype=int)
    a = np.zeros(100, dtype=int)
    b = np.r_[np.ones(30, dtype=int), np.zeros(70, dtype=int)]
    result = mcnemar(y, a, b)
    assert (result["a_only_correct"], result["b_only_correct"]) == (30, 0) and result["p_value"] < 1e-8
    diff = paired_accuracy_difference(y, a, b)
    assert diff["difference"] == pytest.approx(0.3) and diff["ci95"][0] > 0.15


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        evaluate_predictions([0, 1], [0], LABELS)


def test_json_files_are_strict_json_with_null_for_undefined_numbers(tmp_path):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    write_json(tmp_path / "r.json", {"rows": [{"accuracy": 0.5, "paper": float("nan")}],
                                     "ci": (np.float64(np.inf), -np.inf), "n": np.int64(3)})
    loaded = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert loaded == {"rows": [{"accuracy": 0.5, "paper": None}], "ci": [None, None], "n": 3}
