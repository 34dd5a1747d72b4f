"""Calibration on public reference seizures: the decision follows the ranking, the ranking is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiofed.common.errors import SemiofedError
from semiofed.common.learning.calibration import calibrate_on_reference
from semiofed.common.learning.classifier import ClassifierConfig, build_classifier
from semiofed.common.learning.metrics import classification_report, softmax
from semiofed.common.learning.trainer import Seizure, predict_logits


def _seizures(rng: np.random.Generator, n: int) -> list[Seizure]:
    out = []
    for i in range(n):
        label = i % 2
        x = rng.normal(0, 1, (12, 9)).astype(np.float32)
        x[:, 0] += 1.5 * label  # the class shows in one descriptor
        out.append(Seizure(x, label, f"s{i}"))
    return out


def test_a_mis_thresholded_model_decides_by_its_ranking_after_reference_calibration():
    rng = np.random.default_rng(0)
    model = build_classifier(ClassifierConfig(streams=("keypoints",), keypoint_dim=9, temporal="linear", embed_dim=0), seed=0)
    with torch.no_grad():  # a model that ranks well but calls every seizure TCS (what DP noise on the bias does)
        model.head.weight.zero_()
        model.head.weight[1, 0], model.head.weight[0, 0] = 0.4, -0.4
        model.head.bias.copy_(torch.tensor([-3.0, 3.0]))
    reference, test = _seizures(rng, 40), _seizures(rng, 60)
    before = classification_report([s.label for s in test], softmax(predict_logits(model, test, n_segments=None)))
    assert before["balanced_accuracy"] == 0.5 and before["auroc"] > 0.8

    info = calibrate_on_reference(model, predict_logits(model, reference, n_segments=None),
                                  np.array([s.label for s in reference]))
    after = classification_report([s.label for s in test], softmax(predict_logits(model, test, n_segments=None)))
    assert after["auroc"] == pytest.approx(before["auroc"])  # a positive scale and a shift keep the ranking
    assert after["balanced_accuracy"] > 0.75 and info["scale"] > 0 and info["reference_seizures"] == 40


def test_a_reference_without_every_class_is_refused():
    model = build_classifier(ClassifierConfig(streams=("keypoints",), keypoint_dim=9, temporal="linear", embed_dim=0), seed=0)
    with pytest.raises(SemiofedError, match="every class"):
        calibrate_on_reference(model, np.zeros((3, 2)), np.array([1, 1, 1]))
