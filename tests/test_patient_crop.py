"""The STCNN's patient square: it holds every landmark the pose saw, follows the patient, and pads past the frame."""

from __future__ import annotations

import numpy as np

from semiofed.client.deid.patient_crop import (
    MARGIN,
    MIN_SIDE,
    PAD_VALUE,
    PatientCropper,
    crop_square,
    patient_box,
    whole_frame_box,
)
from semiofed.common.records.schema import POSE, POSE_MASK


def _pose(points: list[list[tuple[float, float]]], visibility: float = 0.9) -> dict[str, np.ndarray]:
    """Pose arrays of len(points) frames; each frame's listed (x, y) fill its first landmarks, the rest are unseen."""
    pose = np.zeros((len(points), 33, 4), dtype=np.float32)
    for t, frame in enumerate(points):
        for j, (x, y) in enumerate(frame):
            pose[t, j] = (x, y, 0.0, visibility)
    return {POSE: pose, POSE_MASK: np.array([bool(f) for f in points])}


def test_the_box_is_a_square_around_every_seen_landmark_of_the_window_with_a_margin() -> None:
    # a patient lying across a wide bed ROI, moving an arm up in the second frame
    arrays = _pose([[(0.1, 0.5), (0.9, 0.6)], [(0.5, 0.3), (0.8, 0.55)]])
    left, top, side = patient_box(arrays, 400, 100)
    extent_x, extent_y = (0.9 - 0.1) * 400, (0.6 - 0.3) * 100
    assert side == round(max(extent_x, extent_y) * (1 + 2 * MARGIN))
    assert left <= 0.1 * 400 and left + side >= 0.9 * 400  # the whole patient, not the frame's centre
    assert top <= 0.3 * 100 and top + side >= 0.6 * 100
    # a centre crop of the short side would have kept only x in [150, 250] of this 400 x 100 frame


def test_unseen_and_guessed_landmarks_do_not_stretch_the_box() -> None:
    arrays = _pose([[(0.4, 0.4), (0.6, 0.6)]])
    arrays[POSE][0, 2] = (0.0, 0.0, 0.0, 0.1)  # an off-frame guess, visibility 0.1
    left, top, side = patient_box(arrays, 200, 200)
    assert left > 0 and top > 0
    assert side == round(max(0.2 * 200 * (1 + 2 * MARGIN), MIN_SIDE * 200))
    assert patient_box(_pose([[], []]), 200, 200) is None
    assert patient_box(_pose([[(0.5, 0.5)]], visibility=0.1), 200, 200) is None


def test_a_tiny_detection_does_not_zoom_onto_a_few_pixels() -> None:
    _, _, side = patient_box(_pose([[(0.50, 0.50), (0.51, 0.51)]]), 320, 240)
    assert side == round(MIN_SIDE * 240)


def test_the_crop_copies_the_frame_and_pads_grey_past_its_edges() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    out = crop_square(frames, (-10, 5, 30))
    assert out.shape == (3, 30, 30, 3)
    assert (out[:, :, :10] == PAD_VALUE).all()  # left of the frame
    np.testing.assert_array_equal(out[:, :, 10:], frames[:, 5:35, 0:20])
    whole = crop_square(frames, whole_frame_box(60, 40))
    assert whole.shape == (3, 60, 60, 3)
    np.testing.assert_array_equal(whole[:, 10:50], frames)
    assert (whole[:, :10] == PAD_VALUE).all() and (whole[:, 50:] == PAD_VALUE).all()
    assert (crop_square(frames, (100, 100, 8)) == PAD_VALUE).all()  # wholly outside: grey, no error


def test_the_square_only_grows_so_a_still_patient_is_not_reframed() -> None:
    frames = np.zeros((4, 100, 200, 3), dtype=np.uint8)
    crop = PatientCropper()
    assert crop(frames, _pose([[]] * 4)).shape == (4, 200, 200, 3)  # no pose yet: the whole frame, padded
    assert crop.last is None  # the whole frame is not remembered as the patient
    first = crop(frames, _pose([[(0.2, 0.2), (0.4, 0.6)]] * 4))
    box = crop.last
    assert first.shape[1] == box[2] < 200
    assert crop(frames, _pose([[]] * 4)).shape == first.shape and crop.last == box  # no pose: the patient stays
    crop(frames, _pose([[(0.25, 0.3), (0.35, 0.5)]] * 4))  # a smaller box inside: nothing changes
    assert crop.last == box
    crop(frames, _pose([[(0.6, 0.2), (0.8, 0.6)]] * 4))  # the patient moved right: the square holds both
    grown = crop.last
    assert grown[2] > box[2]
    assert grown[0] <= box[0] and grown[0] + grown[2] >= box[0] + box[2]
    assert grown[0] + grown[2] >= 0.8 * 200
