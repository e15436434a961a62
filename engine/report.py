"""The one evaluation/report path: metrics with bootstrap intervals, text report, confusion PNG."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.io import update_json, write_json, write_text_atomic

#: The metrics every table and summary quotes, each with its bootstrap interval in ``ci95``.
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1")


#: Smallest probability a log-loss reads (a confident wrong answer costs log(1e12), not infinity).
PROBABILITY_FLOOR = 1e-12


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices for a batch of label vectors: ``(..., n) → (..., k, k)``, rows = true class."""
    batch_shape = y_true.shape[:-1]
    flat_batch = int(np.prod(batch_shape)) if batch_shape else 1
    offsets = np.arange(flat_batch).reshape(*batch_shape, 1) * n_classes * n_classes if batch_shape else 0
    codes = (offsets + y_true * n_classes + y_pred).ravel()
    counts = np.bincount(codes, minlength=flat_batch * n_classes * n_classes)
    return counts.reshape(*batch_shape, n_classes, n_classes)


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 and per-class precision/recall/F1/support from ``(..., k, k)``.

    Conventions follow scikit-learn: a 0/0 precision or recall is 0, and balanced accuracy
    averages recall over the classes present in ``y_true``.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support = cm.sum(axis=-1).astype(float)
    predicted = cm.sum(axis=-2).astype(float)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    present = support > 0
    return {
        "accuracy": tp.sum(-1) / np.maximum(cm.sum(axis=(-2, -1)), 1),
        "balanced_accuracy": (recall * present).sum(-1) / np.maximum(present.sum(-1), 1),
        "macro_f1": f1.mean(-1),
        "precision": precision, "recall": recall, "f1": f1, "support": support,
    }


def bootstrap_intervals(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (resampling items) for the headline metrics."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    scores = scores_from_confusion(confusion_matrices(y_true[index], y_pred[index], n_classes))
    tail = (1 - level) / 2 * 100
    return {name: np.percentile(scores[name], [tail, 100 - tail]).tolist() for name in HEADLINE}


def group_bootstrap_intervals(y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[str], n_classes: int,
                              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals resampling whole groups (albums, artists) instead of items.

    Tracks of one album share a cover and an artist's tracks share a sound, so they are not
    independent: resampling items would understate the uncertainty. Each bootstrap draw picks
    as many groups as there are, with replacement, and pools their items.
    """
    codes, group_index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    per_group = np.zeros((len(codes), n_classes, n_classes))
    np.add.at(per_group, (group_index, y_true, y_pred), 1)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(codes), np.full(len(codes), 1 / len(codes)), size=n_boot)
    scores = scores_from_confusion(np.einsum("bg,gij->bij", draws, per_group))
    tail = (1 - level) / 2 * 100
    return {name: np.percentile(scores[name], [tail, 100 - tail]).tolist() for name in HEADLINE}


def evaluate_predictions(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str],
                         n_boot: int = 1000, seed: int = 0, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Every number a report carries, as a JSON-ready dict (class indices index ``labels``).

    With ``groups`` (the item's album/artist group), ``ci95_by_group`` adds intervals that resample
    groups (:func:`group_bootstrap_intervals`) and ``n_groups`` says how many there were.
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"need two equal-length, non-empty label vectors, got {y_true.shape} and {y_pred.shape}")
    k = len(labels)
    cm = confusion_matrices(y_true, y_pred, k)
    scores = scores_from_confusion(cm)
    by_group = {}
    if groups is not None:
        by_group = {"n_groups": len(set(groups)),
                    "ci95_by_group": group_bootstrap_intervals(y_true, y_pred, groups, k, n_boot, seed)}
    return {
        "n": int(len(y_true)),
        "labels": list(labels),
        **{name: float(scores[name]) for name in HEADLINE},
        "ci95": bootstrap_intervals(y_true, y_pred, k, n_boot=n_boot, seed=seed),
        "per_class": {
            label: {"precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
                    "f1": float(scores["f1"][i]), "support": int(scores["support"][i])}
            for i, label in enumerate(labels)
        },
        "confusion": cm.tolist(),
        **by_group,
    }


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE: over ``n_bins`` equal-width confidence bins, the item-weighted mean |accuracy − confidence|.

    Confidence is the top-class probability; an item falls in bin ``b`` when its confidence is in
    ``((b − 1)/n_bins, b/n_bins]`` (the first bin also takes 0).
    """
    proba, y = np.asarray(proba, dtype=float), np.asarray(y)
    confidence, predicted = proba.max(1), proba.argmax(1)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            error += inside.mean() * abs((predicted[inside] == y[inside]).mean() - confidence[inside].mean())
    return float(error)


def log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true class."""
    return float(-np.log(np.clip(np.asarray(proba)[np.arange(len(y)), np.asarray(y)], PROBABILITY_FLOOR, 1)).mean())


def format_classification_report(metrics: dict[str, Any], digits: int = 2) -> str:
    """Text laid out like scikit-learn's ``classification_report``, plus the intervals."""
    labels = metrics["labels"]
    width = max(len("weighted avg"), *(len(label) for label in labels))
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}\n\n"
    rows = []
    for label in labels:
        c = metrics["per_class"][label]
        rows.append(f"{label:>{width}} {c['precision']:>9.{digits}f} {c['recall']:>9.{digits}f} "
                    f"{c['f1']:>9.{digits}f} {c['support']:>9}")
    n = metrics["n"]
    per = metrics["per_class"].values()
    support = np.array([c["support"] for c in per], dtype=float)
    mean = {m: np.mean([c[m] for c in per]) for m in ("precision", "recall", "f1")}
    weighted = {m: float(np.dot([c[m] for c in per], support) / max(support.sum(), 1))
                for m in ("precision", "recall", "f1")}
    tail = [
        "",
        f"{'accuracy':>{width}} {'':>9} {'':>9} {metrics['accuracy']:>9.{digits}f} {n:>9}",
        f"{'macro avg':>{width}} {mean['precision']:>9.{digits}f} {mean['recall']:>9.{digits}f} "
        f"{mean['f1']:>9.{digits}f} {n:>9}",
        f"{'weighted avg':>{width}} {weighted['precision']:>9.{digits}f} {weighted['recall']:>9.{digits}f} "
        f"{weighted['f1']:>9.{digits}f} {n:>9}",
        "",
    ]
    ci = metrics["ci95"]
    tail += [f"{name}: {metrics[name]:.4f}  (95% bootstrap CI {ci[name][0]:.4f}–{ci[name][1]:.4f})"
             for name in HEADLINE]
    return head + "\n".join(rows + tail) + "\n"


def plot_confusions(panels: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Draw one or more confusion matrices side by side (row-normalised colour, counts written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.5, 4.2), squeeze=False)
    for ax, (title, metrics) in zip(axes[0], panels):
        cm = np.asarray(metrics["confusion"], dtype=float)
        labels = metrics["labels"]
        normalised = _safe_divide(cm, cm.sum(axis=1, keepdims=True))
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                        color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}\nacc {metrics['accuracy']:.3f} (n={metrics['n']})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path, metrics: dict[str, Any], title: str = "",
                 extra: dict[str, Any] | None = None) -> None:
    """Write ``metrics.json`` (metrics + ``extra``), ``report.txt`` and ``confusion.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "metrics.json", {**(extra or {}), **metrics})
    header = f"{title}\n\n" if title else ""
    write_text_atomic(run_dir / "report.txt", header + format_classification_report(metrics))
    plot_confusions([(title or "test", metrics)], run_dir / "confusion.png")


def headline(metrics: dict[str, Any], names: Sequence[str] = HEADLINE) -> dict[str, Any]:
    """The part of a metrics dict that tables, model cards and sweep summaries quote: n, ``names``, intervals."""
    return {"n": metrics.get("n"), **{name: metrics.get(name) for name in names},
            "ci95": {name: metrics["ci95"][name] for name in names if name in metrics.get("ci95", {})}}


def add_to_metrics(run_dir: str | Path, **fields: Any) -> None:
    """Add fields to a run's ``metrics.json`` (results computed after the report, e.g. a reference model)."""
    update_json(Path(run_dir) / "metrics.json", **fields)


def mcnemar(y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]) -> dict[str, float]:
    """Exact McNemar test on the items where exactly one of two classifiers is right."""
    from scipy.stats import binomtest

    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    a_only = int(np.sum((pred_a == y_true) & (pred_b != y_true)))
    b_only = int(np.sum((pred_a != y_true) & (pred_b == y_true)))
    p_value = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only_correct": a_only, "b_only_correct": b_only, "p_value": float(p_value)}


def paired_accuracy_difference(y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int],
                               n_boot: int = 2000, seed: int = 0, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy of a minus accuracy of b on the same items, with a paired bootstrap 95% interval.

    With ``groups``, ``ci95_by_group`` resamples whole groups (see :func:`group_bootstrap_intervals`).
    """
    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    diff_per_item = (pred_a == y_true).astype(float) - (pred_b == y_true).astype(float)
    rng = np.random.default_rng(seed)
    boots = diff_per_item[rng.integers(0, len(diff_per_item), size=(n_boot, len(diff_per_item)))].mean(1)
    result = {"difference": float(diff_per_item.mean()), "ci95": np.percentile(boots, [2.5, 97.5]).tolist()}
    if groups is not None:
        codes, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        sums, sizes = np.bincount(index, diff_per_item, len(codes)), np.bincount(index, minlength=len(codes))
        draws = np.random.default_rng(seed).multinomial(len(codes), np.full(len(codes), 1 / len(codes)), size=n_boot)
        result["ci95_by_group"] = np.percentile((draws @ sums) / (draws @ sizes), [2.5, 97.5]).tolist()
    return result
