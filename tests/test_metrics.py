"""Metrics, patient-grouped folds and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from semiofed.common.learning.calibration import fit_temperature
from semiofed.common.learning.metrics import classification_report, patient_group_kfold, softmax


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
