"""The body-region stream (issue 17): per-region movement with sides kept apart, mirror-symmetric fusion, exact
per-patient gradients; on a real tracked phantom seizure with left-sided arm jerks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from semiofed.common.learning.classifier import ClassifierConfig, RegionFusion, build_classifier, parameter_count
from semiofed.common.learning.per_sample import PerPatientGradients
from semiofed.common.learning.trainer import patient_loss
from semiofed.common.records.features import record_inputs
from semiofed.common.records.region_motion import REGION_STREAM_DIM, REGION_STREAM_NAMES, region_window_features
from semiofed.common.records.regions import held_still
from semiofed.common.records.schema import POSE


@pytest.fixture(scope="module")
def left_clonic(tmp_path_factory, model_dir):
    from test_explain import left_clonic as make  # the same rendered, tracked phantom seizure

    return make.__wrapped__(tmp_path_factory, model_dir)


def _column(name: str) -> int:
    return REGION_STREAM_NAMES.index(name)


def test_the_seizing_arm_moves_more_than_the_other_and_holding_it_still_removes_that(left_clonic) -> None:
    record, truth = left_clonic
    feats, bounds = region_window_features(record.arrays, frame_size=record.frame_size)
    assert feats.shape[1] == REGION_STREAM_DIM and np.isfinite(feats).all()
    during = (bounds.mean(axis=1) > truth["onset_s"] + 1) & (bounds.mean(axis=1) < truth["offset_s"] - 1)
    left, right = feats[during, _column("left_arm_energy")], feats[during, _column("right_arm_energy")]
    assert left.mean() > right.mean() + 0.2  # log10 units: the left arm jerks
    still = region_window_features(held_still(record.arrays, "left_arm"), frame_size=record.frame_size)[0]
    assert still[during, _column("left_arm_energy")].mean() < left.mean() - 0.3
    assert np.allclose(still[:, _column("right_leg_energy")], feats[:, _column("right_leg_energy")])


def test_a_mirrored_recording_swaps_the_sides_of_the_stream(left_clonic) -> None:
    record, _ = left_clonic
    pose = record.arrays[POSE].copy()
    mirrored = pose.copy()
    mirrored[:, :, 0] = 1.0 - pose[:, :, 0]
    # MediaPipe's left/right landmarks are the patient's: a mirror image swaps which side each joint is on
    swap = np.arange(33)
    for a, b in ((11, 12), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22), (23, 24), (25, 26), (27, 28), (29, 30),
                 (31, 32), (1, 4), (2, 5), (3, 6), (7, 8), (9, 10)):
        swap[a], swap[b] = b, a
    mirror = replace(record, arrays={**record.arrays, POSE: mirrored[:, swap]})
    a = region_window_features(record.arrays, frame_size=record.frame_size)[0]
    b = region_window_features(mirror.arrays, frame_size=record.frame_size)[0]
    for part in ("arm", "hand", "leg"):
        for kind in ("energy", "rhythm"):
            np.testing.assert_allclose(a[:, _column(f"left_{part}_{kind}")], b[:, _column(f"right_{part}_{kind}")], atol=1e-5)
    # ... and the fusion the classifier reads is the same for both
    fusion = RegionFusion()
    with torch.no_grad():
        np.testing.assert_allclose(fusion(torch.from_numpy(a)).numpy(), fusion(torch.from_numpy(b)).numpy(), atol=1e-4)


def test_the_region_model_is_small_and_its_per_patient_gradients_are_exact(left_clonic) -> None:
    record, _ = left_clonic
    config = ClassifierConfig(streams=("regions",), stcnn_dim=0, hidden=4, temporal="gru")
    model = build_classifier(config, seed=0).double()
    assert parameter_count(model) < 400  # DP-sized (docs/privacy.md's rule: about the default model's size)
    x = torch.from_numpy(record_inputs(record, config.streams)).double()[None, None].repeat(3, 2, 1, 1)
    x = x + 0.1 * torch.randn_like(x)
    y, mask = torch.tensor([[0, 1], [1, 1], [0, 0]]), torch.ones(3, 2, dtype=torch.double)
    batched = PerPatientGradients(model).compute(lambda m: patient_loss(m, x, y, mask, None), 3)
    for p in range(3):
        model.zero_grad()
        patient_loss(model, x[p : p + 1], y[p : p + 1], mask[p : p + 1], None).backward()
        for got, param in zip(batched, model.parameters()):
            torch.testing.assert_close(got[p], param.grad, rtol=1e-7, atol=1e-10)
