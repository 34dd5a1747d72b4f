"""The side stream: how the patient's left differs from their right, per window, for the model's side output.

Seven left-minus-right differences per window: the arm, hand and leg log motion
energy and rhythmic share of the body-region stream (common/records/region_motion.py,
already on its fixed public scale), and the wrist's height above its own
shoulder along the body axis in torso lengths (posture: a dystonic hand is held
up against the chest, not moved; median over the window's frames where the wrist
is seen; 0 where either wrist is seen in fewer than MIN_FRAMES). A mirrored video
gives the negated vector, so a model with no intercept on these inputs gives a
mirrored seizure the mirrored answer (common/learning/classifier.py, the side
output). The FOS/TCS decision never reads them: it stays mirror-free.

Why these seven: bench/bench_side_evidence.py (docs/benchmarks.md, "What side
labels would allow").
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from semiofed.common.records.motion import CLIP
from semiofed.common.records.region_motion import REGION_STREAM_NAMES, region_window_features
from semiofed.common.records.schema import FRAME_TIMES, POSE, POSE_MASK

SIDED = ("arm_energy", "arm_rhythm", "hand_energy", "hand_rhythm", "leg_energy", "leg_rhythm")
SIDE_FEATURE_NAMES: tuple[str, ...] = tuple(f"{k}_left_minus_right" for k in SIDED) + ("wrist_height_left_minus_right",)
SIDE_DIM = len(SIDE_FEATURE_NAMES)
SIDES = ("right", "left")  # index 1 (a positive side logit) is the patient's left
_WRISTS = ((15, 11), (16, 12))  # (wrist, shoulder), MediaPipe pose indices: left, then right
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 11, 12, 23, 24
MIN_VISIBILITY = 0.3  # a wrist MediaPipe places below this is not counted as seen
MIN_FRAMES = 3  # fewer seen frames in a window: that wrist's height is unknown there


def wrist_heights(arrays: Mapping[str, np.ndarray], frame_size: tuple[int, int] | None) -> np.ndarray:
    """[T, 2] each wrist's height above its shoulder along the body axis, in torso lengths (NaN where unseen)."""
    pose = np.asarray(arrays[POSE], dtype=np.float64)
    out = np.full((pose.shape[0], 2), np.nan)
    if pose.shape[0] == 0:
        return out
    xy = pose[:, :, :2].copy()
    if frame_size:
        width, height = frame_size
        xy *= np.array([width, height], dtype=np.float64) / max(width, height)
    up = xy[:, [_L_SHOULDER, _R_SHOULDER]].mean(axis=1) - xy[:, [_L_HIP, _R_HIP]].mean(axis=1)
    torso = np.linalg.norm(up, axis=1)
    ok = np.asarray(arrays[POSE_MASK]).astype(bool) & np.isfinite(torso) & (torso > 1e-6)
    up = up / np.where(ok, torso, 1.0)[:, None]
    for k, (wrist, shoulder) in enumerate(_WRISTS):
        seen = ok & (pose[:, wrist, 3] >= MIN_VISIBILITY) & np.isfinite(xy[:, [wrist, shoulder]]).all(axis=(1, 2))
        rise = ((xy[:, wrist] - xy[:, shoulder]) * up).sum(axis=1) / np.where(ok, torso, 1.0)
        out[seen, k] = rise[seen]
    return out


def side_window_features(arrays: Mapping[str, np.ndarray], *, frame_size: tuple[int, int] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(features [W, SIDE_DIM] float32, window times [W, 2] s) of a record's pose track."""
    regions, bounds = region_window_features(arrays, frame_size=frame_size)
    out = np.zeros((bounds.shape[0], SIDE_DIM), dtype=np.float64)
    for k, name in enumerate(SIDED):
        # a region seen in too little of a window is the region stream's 0 (log energy of 0.1 torso lengths a
        # second, rhythm share 1/2): a seen limb moving more than that points to its side, one moving less away
        out[:, k] = regions[:, REGION_STREAM_NAMES.index(f"left_{name}")] - regions[:, REGION_STREAM_NAMES.index(f"right_{name}")]
    heights = wrist_heights(arrays, frame_size)
    times = np.asarray(arrays[FRAME_TIMES], dtype=np.float64)
    for w, (start, end) in enumerate(bounds.astype(np.float64)):
        inside = (times >= start) & (times < end)
        left, right = heights[inside, 0], heights[inside, 1]
        if np.isfinite(left).sum() >= MIN_FRAMES and np.isfinite(right).sum() >= MIN_FRAMES:
            out[w, -1] = np.nanmedian(left) - np.nanmedian(right)
    return np.clip(out, -CLIP, CLIP).astype(np.float32), bounds.astype(np.float32)
