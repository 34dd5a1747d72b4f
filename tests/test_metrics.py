"""Metrics, patient-grouped folds and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from semiofed.common.learning.calibration import fit_temperature
from semiofed.common.learning.metrics import (bootstrap_intervals, classification_report, paired_difference,
                                              patient_group_kfold, softmax)


def test_report_on_a_known_confusion():
    y = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    r = classification_report(y, probs)
    assert r["confusion_matrix"] == [[2, 1], [1, 1]]
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r["f1_macro"] == pytest.approx((2 * (2 / 3) * (2 / 3) / (4 / 3) + 0.5) / 2)
    assert r["auroc"] == pytest.approx(5 / 6)  # positives 0.7, 0.4 vs negatives 0.1, 0.2, 0.6: 5 of 6 pairs
    assert 0 <= r["ece"] <= 1


def test_folds_never_share_a_patient_and_cover_all():
    patients = [f"p{i}" for i in range(23)]
    folds = patient_group_kfold(patients, [i % 2 for i in range(23)], 5, seed=3)
    flat = [p for f in folds for p in f]
    assert sorted(flat) == sorted(patients) and len(set(flat)) == len(flat)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for fold in folds:  # both labels in every fold
        assert {int(p[1:]) % 2 for p in fold} == {0, 1}


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    true_logit = rng.normal(0, 1.5, 2000)
    p1 = 1 / (1 + np.exp(-true_logit))
    y = (rng.random(2000) < p1).astype(int)
    logits = np.stack([np.zeros(2000), 4 * true_logit], axis=1)  # 4x overconfident
    t = fit_temperature(logits, y)
    assert t == pytest.approx(4.0, rel=0.15)
    before = classification_report(y, softmax(logits))["ece"]
    after = classification_report(y, softmax(logits, t))["ece"]
    assert after < before / 2


def test_the_paired_difference_sees_a_gain_that_separate_intervals_hide():
    """Two models on the same 60 seizures: b is a with 6 errors fixed. Each model's own interval overlaps the other's,
    but the paired interval of their difference lies above 0; a model against itself differs by exactly 0."""
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 30)
    correct = rng.random(60) < 0.75
    p_a = np.where(correct, y, 1 - y).astype(float)
    fixed = np.flatnonzero(~correct)[:6]
    p_b = p_a.copy()
    p_b[fixed] = y[fixed]
    probs = lambda p1: np.stack([1 - (0.1 + 0.8 * p1), 0.1 + 0.8 * p1], axis=1)  # noqa: E731
    a, b = probs(p_a), probs(p_b)
    gain = paired_difference(y, b, a)
    assert gain["balanced_accuracy"]["difference"] == pytest.approx(6 / 60, abs=0.02)
    assert gain["balanced_accuracy"]["ci95"][0] > 0
    own_a, own_b = bootstrap_intervals(y, a), bootstrap_intervals(y, b)
    assert own_b["balanced_accuracy"][0] < own_a["balanced_accuracy"][1]  # separately, the intervals overlap
    same = paired_difference(y, a, a)
    assert same["auroc"]["difference"] == 0 and same["auroc"]["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same seizures"):
        paired_difference(y, a, a[:-1])
