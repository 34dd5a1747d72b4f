"""Honest landmarks: poses that cannot be the patient are dropped, left/right flips repaired, quality measured.

Lenient detection thresholds find a patient under a blanket, and now and then
a pose in the folds of the blanket or the bed rails. A false pose is rarely the
patient's size: each frame's body scale (the mean of shoulder width, hip width
and the shoulder-to-hip length, in pixels) is compared with the median of the
video's own detected frames, and a pose outside [1/SCALE_RATIO, SCALE_RATIO]
of it is dropped (its mask set False, its landmarks zeroed). A video with fewer than MIN_FRAMES
detected frames has no reliable median and is left as it is.

MediaPipe names sides by the body's own left and right, and it flips them
for a frame or more when the patient is seen from the back or lying in a
mirror-symmetric pose. A frame whose shoulders and hips lie much closer to
the previous frame's with the sides exchanged is flipped back, and so are
its other left/right landmarks; the next frame is compared with the repaired
one, so a lasting flip is repaired throughout.

`quality` is what the record keeps of it: per stream, the share of frames
detected, and for the pose the share kept as plausible, the mean visibility of
the kept landmarks (MediaPipe's per-landmark quality, kept per frame and
landmark in the pose array), and the flips repaired.
"""

from __future__ import annotations

import numpy as np

from semiofed.common.records.schema import FACE_MASK, HANDS_MASK, POSE, POSE_MASK

POOR_TRACKING = 0.5  # a record whose pose is kept in fewer frames than this tracks poorly
SCALE_RATIO = 2.0
MIN_FRAMES = 5
FLIP_GAIN = 0.5  # flipped when the exchanged sides are closer than this share of the kept ones

# MediaPipe pose: (left, right) landmark pairs
SIDE_PAIRS = ((1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22),
              (23, 24), (25, 26), (27, 28), (29, 30), (31, 32))
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 11, 12, 23, 24
_ANCHORS_LEFT, _ANCHORS_RIGHT = (_L_SHOULDER, _L_HIP), (_R_SHOULDER, _R_HIP)


def body_scale(pose: np.ndarray, width: int, height: int) -> np.ndarray:
    """The body scale in pixels of poses [N, 33, 4+]: mean of shoulder width, hip width and shoulder-to-hip length."""
    xy = pose[..., :2] * np.array([width, height], dtype=np.float32)
    shoulders = np.linalg.norm(xy[:, _L_SHOULDER] - xy[:, _R_SHOULDER], axis=-1)
    hips = np.linalg.norm(xy[:, _L_HIP] - xy[:, _R_HIP], axis=-1)
    trunk = np.linalg.norm((xy[:, _L_SHOULDER] + xy[:, _R_SHOULDER]) / 2 - (xy[:, _L_HIP] + xy[:, _R_HIP]) / 2, axis=-1)
    return (shoulders + hips + trunk) / 3.0


def drop_implausible(arrays: dict[str, np.ndarray], width: int, height: int) -> int:
    """Set POSE_MASK False where the pose's scale is far from the video's median; return how many were dropped."""
    mask = arrays[POSE_MASK]
    if mask.sum() < MIN_FRAMES:
        return 0
    scale = body_scale(arrays[POSE], width, height)
    median = float(np.median(scale[mask]))
    if median <= 0:
        return 0
    ratio = scale / median
    bad = mask & ((ratio > SCALE_RATIO) | (ratio < 1.0 / SCALE_RATIO))
    arrays[POSE_MASK] = mask & ~bad
    arrays[POSE][bad] = 0.0  # a frame without a pose holds zeros, as MediaPipe's misses do
    return int(bad.sum())


def _flip(pose: np.ndarray) -> np.ndarray:
    out = pose.copy()
    for left, right in SIDE_PAIRS:
        out[left], out[right] = pose[right], pose[left]
    return out


def repair_flips(arrays: dict[str, np.ndarray]) -> int:
    """Exchange left and right in detected frames whose sides jumped to the other side; return how many."""
    pose, mask = arrays[POSE], arrays[POSE_MASK]
    repaired, previous = 0, None
    for i in np.flatnonzero(mask):
        if previous is not None:
            now = pose[i, :, :2]
            kept = sum(np.linalg.norm(now[a] - previous[a]) for a in _ANCHORS_LEFT + _ANCHORS_RIGHT)
            exchanged = sum(np.linalg.norm(now[a] - previous[b]) + np.linalg.norm(now[b] - previous[a])
                            for a, b in zip(_ANCHORS_LEFT, _ANCHORS_RIGHT))
            if exchanged < FLIP_GAIN * kept:
                pose[i] = _flip(pose[i])
                repaired += 1
        previous = pose[i, :, :2].copy()
    return repaired


def clean_pose(arrays: dict[str, np.ndarray], width: int, height: int) -> dict[str, object]:
    """Drop implausible poses and repair flips in place; return the record's pose quality."""
    detected = float(arrays[POSE_MASK].mean()) if len(arrays[POSE_MASK]) else 0.0
    dropped = drop_implausible(arrays, width, height)
    flips = repair_flips(arrays)
    kept = arrays[POSE_MASK]
    visibility = float(arrays[POSE][kept][..., 3].mean()) if kept.any() else 0.0
    return {"detected": round(detected, 4), "plausible": round(float(kept.mean()) if len(kept) else 0.0, 4),
            "dropped": dropped, "flips_repaired": flips, "mean_visibility": round(visibility, 4)}


def quality(arrays: dict[str, np.ndarray], pose_quality: dict[str, object]) -> dict[str, dict[str, object]]:
    """Per stream: the share of frames detected (hands: either hand), and the pose's quality figures."""
    out: dict[str, dict[str, object]] = {"pose": pose_quality}
    if HANDS_MASK in arrays and len(arrays[HANDS_MASK]):
        out["hands"] = {"detected": round(float(arrays[HANDS_MASK].any(axis=1).mean()), 4)}
    if FACE_MASK in arrays and len(arrays[FACE_MASK]):
        out["face"] = {"detected": round(float(arrays[FACE_MASK].mean()), 4)}
    return out


def tracking_warning(detection_rate: dict[str, float]) -> str | None:
    """A one-line warning for a record whose pose was kept in few frames, or None."""
    rate = detection_rate.get("pose")
    if rate is None or rate >= POOR_TRACKING:
        return None
    if rate == 0.0:
        return "no skeleton found: the record keeps its STCNN stream only (check the camera view, or give a roi)"
    return f"pose found in {rate:.0%} of frames: the keypoint stream is mostly masked (check the camera view, or give a roi)"
