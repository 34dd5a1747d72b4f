"""Classification metrics and patient-grouped cross-validation splits (numpy only)."""

from __future__ import annotations

import math

from typing import Any, Sequence

import numpy as np

from semiofed.common.errors import SemiofedError

# Metric keys, one naming style everywhere (reports, checkpoints, JSON output).
ACCURACY = "accuracy"
BALANCED_ACCURACY = "balanced_accuracy"
F1_MACRO = "f1_macro"
AUROC = "auroc"
ECE = "ece"
CONFUSION = "confusion_matrix"
N_SEIZURES = "n_seizures"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def _binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted as one half."""
    pos, neg = score[y == 1], score[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_of = np.empty(len(values))
    rank_of[order] = ranks
    return float((rank_of[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUROC of the second class, or macro one-vs-rest for more classes (nan if a class is absent)."""
    y_true = np.asarray(y_true)
    if probs.shape[1] == 2:
        return _binary_auroc((y_true == 1).astype(int), probs[:, 1])
    scores = [_binary_auroc((y_true == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def classification_report(y_true: Sequence[int], probs: np.ndarray) -> dict[str, object]:
    """Accuracy, balanced accuracy, macro F1, AUROC, ECE and the confusion matrix."""
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        raise SemiofedError("no seizures to evaluate", "hold out at least one patient with a labelled seizure")
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, n_classes)
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(n_classes), where=support > 0)
    predicted = cm.sum(axis=0)
    precision = np.divide(np.diag(cm), predicted, out=np.zeros(n_classes), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n_classes), where=(precision + recall) > 0)
    present = support > 0
    return {
        ACCURACY: float((pred == y).mean()),
        BALANCED_ACCURACY: float(recall[present].mean()),
        F1_MACRO: float(f1[present].mean()),
        AUROC: auroc(y, probs),
        ECE: expected_calibration_error(y, probs),
        CONFUSION: cm.tolist(),
        N_SEIZURES: int(len(y)),
    }


def _bootstrap(y: np.ndarray, statistic: Any, *, n_boot: int, level: float, seed: int) -> dict[str, list[float]]:
    """Percentile intervals of statistic(idx) -> {BALANCED_ACCURACY, AUROC} over resamples of the held-out seizures
    (resamples with one class only are skipped: neither figure exists there; non-finite values are dropped)."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {BALANCED_ACCURACY: [], AUROC: []}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:  # both classes are needed for either figure
            continue
        drawn = statistic(idx)
        for key in values:
            if math.isfinite(drawn[key]):
                values[key].append(float(drawn[key]))
    tail = (1.0 - level) / 2 * 100
    return {key: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] if v else [math.nan, math.nan]
            for key, v in values.items()}


def bootstrap_intervals(y_true: Sequence[int], probs: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of balanced accuracy and AUROC, resampling the held-out seizures."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs)
    return _bootstrap(y, lambda idx: classification_report(y[idx], probs[idx]), n_boot=n_boot, level=level, seed=seed)


def paired_difference(y_true: Sequence[int], probs_a: np.ndarray, probs_b: np.ndarray, *, n_boot: int = 2000,
                      level: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Model a minus model b on the same held-out seizures: balanced accuracy and AUROC differences with percentile
    bootstrap intervals, both models scored on the same resampled seizures (a paired bootstrap)."""
    y = np.asarray(y_true, dtype=np.int64)
    probs_a, probs_b = np.asarray(probs_a), np.asarray(probs_b)
    if probs_a.shape != probs_b.shape or len(probs_a) != len(y):
        raise ValueError(f"paired models need the same seizures: {probs_a.shape}, {probs_b.shape}, {len(y)} labels")

    def difference(idx: np.ndarray) -> dict[str, float]:
        a, b = classification_report(y[idx], probs_a[idx]), classification_report(y[idx], probs_b[idx])
        return {key: a[key] - b[key] for key in (BALANCED_ACCURACY, AUROC)}

    point = difference(np.arange(len(y)))
    intervals = _bootstrap(y, difference, n_boot=n_boot, level=level, seed=seed)
    return {key: {"difference": float(point[key]), "ci95": intervals[key]} for key in intervals}


def patient_group_kfold(
    patients: Sequence[str], labels: Sequence[int], k: int, *, seed: int = 0
) -> list[list[str]]:
    """Split patient pseudonyms into k folds, no patient in two folds, label mix balanced greedily.

    `labels` gives each patient's majority label (for stratification).
    """
    unique = sorted(set(patients))
    if k < 2 or k > len(unique):
        raise SemiofedError(f"cannot make {k} patient folds from {len(unique)} patients", f"use 2 <= k <= {len(unique)}")
    label_of = dict(zip(patients, labels))
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    for label in sorted(set(label_of.values())):
        group = [p for p in unique if label_of[p] == label]
        rng.shuffle(group)
        for patient in group:  # deal into the currently smallest fold
            min(folds, key=len).append(patient)
    return folds
