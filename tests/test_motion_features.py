"""Seizure-motion descriptors: known rhythms, side and camera invariance, missing data, on synthetic and real pose tracks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiofed.client.deid import landmarks as lm
from semiofed.client.deid.video import read_frames
from semiofed.common.errors import RecordError
from semiofed.common.records import motion
from semiofed.common.records.schema import FRAME_TIMES, POSE, POSE_MASK

FPS = 15.0
NAMES = motion.MOTION_FEATURE_NAMES
# MediaPipe pose pairs (subject's left, right): eyes, ears, mouth, arms, hands, legs, feet.
MIRROR_PAIRS = [(1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20),
                (21, 22), (23, 24), (25, 26), (27, 28), (29, 30), (31, 32)]
# A supine body seen from above, in normalised image coordinates (x right, y down).
REST = {0: (0.50, 0.30), 11: (0.44, 0.40), 12: (0.56, 0.40), 13: (0.41, 0.50), 14: (0.59, 0.50), 15: (0.41, 0.60),
        16: (0.59, 0.60), 23: (0.46, 0.62), 24: (0.54, 0.62), 25: (0.46, 0.76), 26: (0.54, 0.76), 27: (0.46, 0.90),
        28: (0.54, 0.90)}


def body(seconds: float = 10.0, *, jitter: float = 0.0005, seed: int = 0) -> dict[str, np.ndarray]:
    """A still body with MediaPipe-like landmark jitter: POSE, POSE_MASK, FRAME_TIMES."""
    n = int(seconds * FPS)
    pose = np.zeros((n, 33, 4))
    for j in range(33):
        pose[:, j, :2] = REST.get(j, (0.5, 0.35))
    pose[:, :, :2] += np.random.default_rng(seed).normal(0.0, jitter, (n, 33, 2))
    pose[:, :, 3] = 0.95
    return {POSE: pose.astype(np.float32), POSE_MASK: np.ones(n, bool), FRAME_TIMES: (np.arange(n) / FPS).astype(np.float32)}


def oscillate(arrays: dict[str, np.ndarray], joints: tuple[int, ...], hz: float, amplitude: float = 0.04) -> dict[str, np.ndarray]:
    """Move the joints up and down together (along the body axis) at `hz`."""
    out = {k: v.copy() for k, v in arrays.items()}
    t = out[FRAME_TIMES].astype(np.float64)
    for j in joints:
        out[POSE][:, j, 1] += (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return out


def mirrored(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same body filmed in a mirror: x flipped and every left/right landmark swapped."""
    out = {k: v.copy() for k, v in arrays.items()}
    pose = out[POSE]
    pose[:, :, 0] = 1.0 - pose[:, :, 0]
    for left, right in MIRROR_PAIRS:
        pose[:, [left, right]] = pose[:, [right, left]]
    return out


def feature(feats: np.ndarray, valid: np.ndarray, name: str) -> float:
    """The physical value of one feature, averaged over the valid windows."""
    return float(motion.unscale_features(feats[valid]).mean(axis=0)[NAMES.index(name)])


def test_bilateral_3hz_arm_clonus_is_rhythmic_synchronous_and_symmetric() -> None:
    feats, times, valid = motion.window_features(oscillate(body(), (15, 16, 13, 14), 3.0))
    assert valid.all() and feats.shape == (len(times), motion.MOTION_DIM)
    assert abs(feature(feats, valid, "arm_freq") - 3.0) < 0.25
    assert feature(feats, valid, "arm_rhythm") > 0.7
    assert feature(feats, valid, "arm_speed_sync") > 0.9
    assert feature(feats, valid, "arm_velocity_sync") > 0.9
    assert feature(feats, valid, "arm_asymmetry") < 0.1
    # the still legs stay near jitter energy, far below the arms
    assert feature(feats, valid, "arm_energy_strong") - feature(feats, valid, "leg_energy_strong") > 1.0


def test_one_sided_clonus_is_asymmetric_and_the_side_does_not_matter() -> None:
    left = oscillate(body(), (15, 13), 2.5)  # the subject's left arm only
    feats, _, valid = motion.window_features(left)
    assert feature(feats, valid, "arm_asymmetry") > 0.8
    assert abs(feature(feats, valid, "arm_freq") - 2.5) < 0.25
    assert abs(feature(feats, valid, "arm_speed_sync")) < 0.5
    right = oscillate(body(), (16, 14), 2.5)  # the right arm instead: the same seizure for the descriptors
    feats_r, _, valid_r = motion.window_features(right)
    for name in ("arm_energy_strong", "arm_asymmetry", "arm_rhythm", "arm_freq", "arm_jerk", "tonic_hold"):
        assert feature(feats_r, valid_r, name) == pytest.approx(feature(feats, valid, name), abs=0.02), name


def test_posture_one_arm_held_up_is_asymmetric_both_arms_held_out_still_is_tonic() -> None:
    one = body()
    one[POSE][:, 15, :2] = (0.30, 0.30)  # the left wrist held up and out, the right arm resting at the side
    feats, _, valid = motion.window_features(one)
    assert feature(feats, valid, "arm_posture_asymmetry") > 0.5
    both = body()
    both[POSE][:, 15, :2], both[POSE][:, 16, :2] = (0.30, 0.30), (0.70, 0.30)  # both arms stiffly out, still
    feats, _, valid = motion.window_features(both)
    assert feature(feats, valid, "arm_posture_asymmetry") < 0.05
    assert feature(feats, valid, "tonic_hold") > 0.5
    shaking = oscillate(both, (15, 16), 3.0, 0.06)  # the same posture, jerking
    feats, _, valid = motion.window_features(shaking)
    assert feature(feats, valid, "tonic_hold") < 0.2


@pytest.mark.parametrize("seed", [0, 1])
def test_mirrored_video_gives_the_same_features(seed: int) -> None:
    arrays = oscillate(oscillate(body(seed=seed, jitter=0.002), (15,), 2.0), (28,), 1.3, 0.02)
    feats, _, valid = motion.window_features(arrays)
    feats_m, _, valid_m = motion.window_features(mirrored(arrays))
    np.testing.assert_array_equal(valid_m, valid)
    np.testing.assert_allclose(feats_m, feats, atol=1e-4)


def test_camera_distance_position_and_in_plane_rotation_leave_features_unchanged() -> None:
    arrays = oscillate(oscillate(body(jitter=0.002), (15, 16), 3.0), (0,), 1.5, 0.01)
    feats, _, _ = motion.window_features(arrays)
    moved = {k: v.copy() for k, v in arrays.items()}
    xy = moved[POSE][:, :, :2].astype(np.float64) - 0.5
    turn = np.deg2rad(90.0)  # a camera on its side (square frame, so x and y keep their lengths)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    moved[POSE][:, :, :2] = (0.4 * xy @ rot.T + [0.3, 0.6]).astype(np.float32)  # farther away and off-centre
    feats_moved, _, _ = motion.window_features(moved)
    np.testing.assert_allclose(feats_moved, feats, atol=2e-3)


def test_non_square_frames_are_measured_in_true_proportions() -> None:
    arrays = oscillate(body(jitter=0.002), (15, 16), 3.0)
    feats, _, _ = motion.window_features(arrays)
    wide = {k: v.copy() for k, v in arrays.items()}
    wide[POSE][:, :, 0] = 0.5 + (wide[POSE][:, :, 0] - 0.5) * 0.75  # the same scene in a 4:3 frame
    feats_wide, _, _ = motion.window_features(wide, frame_size=(320, 240))
    np.testing.assert_allclose(feats_wide, feats, atol=2e-3)
    squashed, _, _ = motion.window_features(wide)  # without the frame size the body looks narrower
    assert not np.allclose(squashed, feats, atol=2e-3)


def test_short_dropouts_are_bridged_and_long_gaps_invalidate_their_windows() -> None:
    arrays = oscillate(body(12.0), (15, 16), 3.0)
    arrays[POSE_MASK][::4] = False  # MediaPipe losing every fourth frame
    gap = (arrays[FRAME_TIMES] >= 5.0) & (arrays[FRAME_TIMES] < 8.0)
    arrays[POSE_MASK][gap] = False
    arrays[POSE][~arrays[POSE_MASK]] = np.nan  # a lost frame's landmarks may be garbage
    feats, times, valid = motion.window_features(arrays)
    assert np.isfinite(feats).all()
    inside = (times[:, 0] >= 4.9) & (times[:, 1] <= 8.1)
    assert inside.any() and not valid[inside].any()
    assert valid[times[:, 1] <= 5.0].all() and valid[times[:, 0] >= 8.0].all()
    clean = valid & (times[:, 1] <= 5.0)
    assert abs(feature(feats, clean, "arm_freq") - 3.0) < 0.25
    assert (feats[~valid] == 0).all()


def test_no_pose_at_all_gives_invalid_zero_windows_and_a_finite_pooled_vector() -> None:
    arrays = body(6.0)
    arrays[POSE_MASK][:] = False
    arrays[POSE][:] = np.nan
    feats, times, valid = motion.window_features(arrays)
    assert len(times) > 1 and not valid.any() and (feats == 0).all()
    pooled = motion.pool_seizure(feats, valid)
    assert pooled.shape == (motion.POOLED_DIM,) and np.isfinite(pooled).all()
    assert pooled[motion.POOLED_FEATURE_NAMES.index("valid_share")] == -1.0


def test_occluded_limbs_are_missing_not_still() -> None:
    arrays = oscillate(body(), (27, 28), 2.0)
    arrays[POSE][:, [25, 26, 27, 28], 3] = 0.05  # legs under a blanket: MediaPipe guesses them
    feats, _, valid = motion.window_features(arrays)
    assert valid.all()
    assert feature(feats, valid, "leg_visibility") == 0.0
    for name in ("leg_energy_strong", "leg_rhythm", "leg_speed_sync"):
        assert (feats[:, NAMES.index(name)] == 0).all(), name  # neutral, not the guessed movement


@pytest.mark.parametrize("frames", [0, 1])
def test_empty_or_single_frame_records_give_one_invalid_window(frames: int) -> None:
    arrays = {k: v[:frames] for k, v in body(1.0).items()}
    feats, times, valid = motion.window_features(arrays)
    assert feats.shape == (1, motion.MOTION_DIM) and times.shape == (1, 2) and not valid.any()
    assert np.isfinite(feats).all() and np.isfinite(times).all()


def test_garbage_tracks_stay_finite_and_inside_the_clip_range() -> None:
    rng = np.random.default_rng(3)
    n = 200
    arrays = {POSE: rng.uniform(-2, 3, (n, 33, 4)).astype(np.float32), POSE_MASK: rng.random(n) < 0.7,
              FRAME_TIMES: np.sort(rng.uniform(0, 9, n)).astype(np.float32)}
    arrays[POSE][rng.random((n, 33)) < 0.05] = np.inf
    feats, times, valid = motion.window_features(arrays, window_s=2.0, hop_s=1.0)
    assert np.isfinite(feats).all() and np.abs(feats).max() <= motion.CLIP
    assert np.isfinite(times).all() and (times[:, 1] > times[:, 0]).all()
    pooled = motion.pool_seizure(feats, valid)
    assert np.isfinite(pooled).all() and np.abs(pooled).max() <= motion.CLIP


def test_windows_follow_the_record_time_axis() -> None:
    feats, times, _ = motion.window_features(body(10.0), window_s=3.0, hop_s=0.5)
    np.testing.assert_allclose(times[:, 0], 0.5 * np.arange(len(times)), atol=1e-5)
    assert times[-1, 1] == pytest.approx(10.0, abs=1 / FPS + 1e-5)
    short, short_times, short_valid = motion.window_features(body(2.0))
    assert short.shape == (1, motion.MOTION_DIM) and short_valid.all()
    assert short_times[0, 1] == pytest.approx(2.0, abs=1e-5)


def test_bad_arrays_are_refused_with_a_fix() -> None:
    arrays = body(3.0)
    with pytest.raises(RecordError, match="site prepare"):
        motion.window_features({POSE: arrays[POSE], FRAME_TIMES: arrays[FRAME_TIMES]})
    with pytest.raises(RecordError, match=r"\[T,33,4\]"):
        motion.window_features({**arrays, POSE: arrays[POSE][:, :17]})


# ---------------------------------------------------------------- real pose tracks

def real_pose(path: Path, model_dir: Path, n: int) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    times, frames = read_frames(path, fps=FPS)
    frames, times = frames[:n], times[:n]
    with lm.PoseStream(model_dir) as stream:
        arrays = stream.process(frames, np.round(times * 1000).astype(np.int64))
    arrays[FRAME_TIMES] = times.astype(np.float32)
    return arrays, (int(frames.shape[2]), int(frames.shape[1]))


@pytest.fixture(scope="module")
def wrestlers(model_dir: Path, videos_dir: Path) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    return real_pose(videos_dir / "mmaction2_demo.mp4", model_dir, 90)


def test_real_pose_track_gives_finite_valid_side_invariant_features(wrestlers) -> None:
    arrays, size = wrestlers
    feats, times, valid = motion.window_features(arrays, frame_size=size)
    assert np.isfinite(feats).all() and np.abs(feats).max() <= motion.CLIP
    assert valid.mean() >= 0.75  # MediaPipe finds the arm wrestler in most frames
    assert times[-1, 1] == pytest.approx(float(arrays[FRAME_TIMES][-1]) + 1 / FPS, abs=1e-3)
    feats_m, _, _ = motion.window_features(mirrored(arrays), frame_size=size)
    np.testing.assert_allclose(feats_m, feats, atol=1e-4)
    # upper bodies only: the wrists are seen far more than the (off-frame) ankles
    assert feature(feats, valid, "arm_visibility") > feature(feats, valid, "leg_visibility") + 0.3


def test_head_and_shoulders_clip_has_no_arm_or_leg_motion_to_report(model_dir: Path, videos_dir: Path) -> None:
    arrays, size = real_pose(videos_dir / "carphone_pristine.mp4", model_dir, 45)
    feats, _, valid = motion.window_features(arrays, frame_size=size)
    assert valid.any() and np.isfinite(feats).all()
    assert feature(feats, valid, "leg_visibility") < 0.2
    assert (feats[valid, NAMES.index("leg_energy_strong")] == 0).all()
