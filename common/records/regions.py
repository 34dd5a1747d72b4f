"""Body regions of a record's pose track, and the same track with one region held still.

The eight regions a clinician names when describing a seizure: face/head, left
and right arm, left and right hand, left and right leg, and the trunk; sides are
the patient's own (MediaPipe's left/right landmarks). A region is held still by
bringing its movement relative to the joint it hangs from (the shoulder for an
arm, the wrist for a hand, the hip for a leg, the shoulder midpoint for the
head) down to the video's tracking-noise floor: each landmark keeps its median
offset from that joint plus its own wobble scaled to the floor, so the limb
stays where it was and moves no more than the quietest parts of this video,
while the rest of the body moves as recorded. Not pinned exactly: no tracked
limb is ever perfectly still, and a model asked about a limb without any
jitter would answer about that artefact, not about the seizure. The floor is
the 10th percentile of the RMS speed, over 3 s windows, of the head, wrists
and ankles relative to the body. Holding the trunk still brings the body
centre's own movement (rocking, whole-body jerks) to the same floor and keeps
the limbs' movement relative to it.

Only the record itself is read; the result is an ordinary pose track, so any
model input (common/records/features.py) can be recomputed from it. This is the
occlusion that client/training/explain.py uses for per-region attributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from semiofed.common.records.schema import FRAME_TIMES, HANDS, HANDS_MASK, POSE, POSE_MASK

# MediaPipe pose landmark indices.
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 11, 12, 23, 24
_L_WRIST, _R_WRIST = 15, 16
TORSO = (_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP)


@dataclass(frozen=True)
class Region:
    """A body region: its name, body side (or None), pose landmarks, and the landmarks it hangs from."""

    name: str
    side: str | None
    landmarks: tuple[int, ...]
    anchor: tuple[int, ...]  # mean of these is the point the region is pinned to; () for the trunk
    hand: int | None = None  # MediaPipe hands stream index (0 left, 1 right) for a hand region

    @property
    def label(self) -> str:
        """How a clinician would write it: 'left arm', 'face/head'."""
        return self.name.replace("_", " ")


REGIONS: tuple[Region, ...] = (
    Region("face_head", None, tuple(range(0, 11)), (_L_SHOULDER, _R_SHOULDER)),
    Region("left_arm", "left", (13, 15), (_L_SHOULDER,)),
    Region("right_arm", "right", (14, 16), (_R_SHOULDER,)),
    Region("left_hand", "left", (17, 19, 21), (_L_WRIST,), hand=0),
    Region("right_hand", "right", (18, 20, 22), (_R_WRIST,), hand=1),
    Region("left_leg", "left", (25, 27, 29, 31), (_L_HIP,)),
    Region("right_leg", "right", (26, 28, 30, 32), (_R_HIP,)),
    Region("trunk", None, TORSO, ()),
)
REGION_NAMES = tuple(r.name for r in REGIONS)
REGION_BY_NAME = {r.name: r for r in REGIONS}
# An arm region also carries the hand that hangs from it (a still arm does not leave the hand swinging).
_CARRIED = {"left_arm": "left_hand", "right_arm": "right_hand"}


def region(name: str) -> Region:
    """The region called `name`, or a KeyError listing the names."""
    if name not in REGION_BY_NAME:
        raise KeyError(f"unknown body region {name!r}; use one of {', '.join(REGION_NAMES)}")
    return REGION_BY_NAME[name]


_FLOOR_POINTS = ((0, (_L_SHOULDER, _R_SHOULDER)), (15, (_L_SHOULDER,)), (16, (_R_SHOULDER,)), (27, (_L_HIP,)),
                 (28, (_R_HIP,)))
FLOOR_WINDOW_S = 3.0
FLOOR_PERCENTILE = 10.0


def _rms_speed(points: np.ndarray, ok: np.ndarray, times: np.ndarray) -> float:
    """RMS speed of points [T, 2] over the frames where it and the previous frame are seen (0 if none)."""
    dt = np.diff(times)
    step_ok = ok[1:] & ok[:-1] & (dt > 0)
    if not step_ok.any():
        return 0.0
    v = np.linalg.norm(np.diff(points, axis=0)[step_ok], axis=1) / dt[step_ok]
    return float(np.sqrt(np.mean(v**2)))


def noise_floor(arrays: Mapping[str, np.ndarray]) -> float:
    """The video's tracking-noise floor: the 10th percentile of windowed RMS speeds of the head, wrists and ankles
    relative to the joints they hang from (normalised image units per second)."""
    pose = np.asarray(arrays[POSE], dtype=np.float64)
    times = np.asarray(arrays[FRAME_TIMES], dtype=np.float64)
    detected = np.asarray(arrays[POSE_MASK]).astype(bool)
    xy = pose[:, :, :2]
    speeds = []
    if len(times) < 3:
        return 0.0
    edges = np.arange(times[0], times[-1], FLOOR_WINDOW_S / 3)
    for point, anchor in _FLOOR_POINTS:
        rel = xy[:, point] - xy[:, list(anchor)].mean(axis=1)
        ok = detected & np.isfinite(rel).all(axis=1)
        rel = np.nan_to_num(rel)
        for start in edges:
            inside = (times >= start) & (times < start + FLOOR_WINDOW_S)
            if inside.sum() >= 3:
                speed = _rms_speed(rel[inside], ok[inside], times[inside])
                if speed > 0:
                    speeds.append(speed)
    return float(np.percentile(speeds, FLOOR_PERCENTILE)) if speeds else 0.0


def _quieten(points: np.ndarray, anchor: np.ndarray, ok: np.ndarray, times: np.ndarray, floor: float) -> np.ndarray:
    """points [T, K, 2] moved to anchor [T, 1, 2] + median offset + their wobble scaled down to `floor` RMS speed."""
    rel = points - anchor
    out = points.copy()
    for k in range(points.shape[1]):
        seen = ok[:, k] & np.isfinite(rel[:, k]).all(axis=1)
        if not seen.any():
            continue
        centre = np.median(rel[seen, k], axis=0)
        speed = _rms_speed(np.nan_to_num(rel[:, k]), seen, times)
        gain = min(1.0, floor / speed) if speed > 0 else 1.0
        out[seen, k] = anchor[seen, 0] + centre + gain * (rel[seen, k] - centre)
    return out


def held_still(arrays: Mapping[str, np.ndarray], name: str, *, floor: float | None = None) -> dict[str, np.ndarray]:
    """A copy of the record's arrays with region `name` held still (see the module docstring); other arrays shared."""
    chosen = region(name)
    out = dict(arrays)
    pose = np.array(arrays[POSE], dtype=np.float32, copy=True)
    times = np.asarray(arrays[FRAME_TIMES], dtype=np.float64)
    detected = np.asarray(arrays[POSE_MASK]).astype(bool)
    xy = pose[:, :, :2].astype(np.float64)
    finite = np.isfinite(xy).all(axis=2)
    floor = noise_floor(arrays) if floor is None else floor  # the caller's, when it holds several regions still
    if chosen.name == "trunk":
        centre = xy[:, list(TORSO)].mean(axis=1)  # [T, 2]
        ok = detected & finite[:, list(TORSO)].all(axis=1)
        if ok.any():
            still = _quieten(centre[:, None], np.zeros_like(centre)[:, None], ok[:, None], times, floor)[:, 0]
            shift = np.where(ok[:, None], still - centre, 0.0)
            pose[:, :, :2] = (xy + shift[:, None, :]).astype(np.float32)
        out[POSE] = pose
        return out
    carried = [chosen] + ([REGION_BY_NAME[_CARRIED[name]]] if name in _CARRIED else [])
    anchor = xy[:, list(chosen.anchor)].mean(axis=1, keepdims=True)  # [T, 1, 2]
    anchor_ok = detected & finite[:, list(chosen.anchor)].all(axis=1)
    idx = [i for r in carried for i in r.landmarks]
    ok = detected[:, None] & finite[:, idx] & anchor_ok[:, None]
    pose[:, idx, :2] = _quieten(xy[:, idx], anchor, ok, times, floor).astype(np.float32)
    out[POSE] = pose
    for r in carried:  # the hand stream's landmarks follow the still hand, keeping its shape
        if r.hand is not None and HANDS in arrays and np.asarray(arrays[HANDS]).size:
            hands = np.array(arrays[HANDS], dtype=np.float32, copy=True)
            seen = np.asarray(arrays[HANDS_MASK]).astype(bool)[:, r.hand]
            h = hands[:, r.hand, :, :2].astype(np.float64)  # [T, 21, 2]
            hand_ok = seen & np.isfinite(h).all(axis=(1, 2))
            if hand_ok.any():
                shape = np.median((h - h[:, :1])[hand_ok], axis=0)
                wrist = pose[:, r.anchor[0], :2].astype(np.float64)  # the hand hangs from its (possibly held) wrist
                hands[:, r.hand, :, :2] = np.where(hand_ok[:, None, None], wrist[:, None, :] + shape[None], h).astype(np.float32)
            out[HANDS] = hands
    return out
