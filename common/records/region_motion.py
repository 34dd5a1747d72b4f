"""The body-region stream: per-window movement of each body region, sides kept apart.

Where common/records/motion.py orders the limbs stronger/weaker (a left-sided
seizure and its mirror image look the same), this stream keeps the patient's
left and right: for each region of common/records/regions.py, the log motion
energy and the rhythmic share (one 1-6 Hz peak) of its landmark's movement
(face/head: the nose; arms: the wrists; hands: the index fingers relative to
the wrists; legs: the ankles; all relative to the body centre, in torso lengths
per second; trunk: the body centre itself), then how the two arms and the two
legs move together (speed correlation), then the window's validity. Fixed public
scaling as in motion.py (log10 energy + 1, share 0..1 -> -1..1, clipped to
[-CLIP, CLIP]); a region seen in under MIN_COVERAGE of a window gets 0. The
classifier encodes each region with its own small encoder, the two sides of a
limb with the same one (common/learning/classifier.py, `RegionFusion`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from semiofed.common.records.motion import (
    CLIP,
    ENERGY_FLOOR,
    MIN_COVERAGE,
    _masked_corr,
    _masked_mean,
    _spectrum,
    _velocity,
    body_tracks,
)
from semiofed.common.records.regions import REGION_NAMES

# Tracked landmarks: nose, wrists, index fingers, ankles (MediaPipe pose indices).
_JOINTS = (0, 15, 16, 19, 20, 27, 28)
_NOSE, _LW, _RW, _LI, _RI, _LA, _RA = range(7)
REGION_STREAM_NAMES: tuple[str, ...] = tuple(f"{r}_{k}" for r in REGION_NAMES for k in ("energy", "rhythm")) + (
    "arm_sync", "leg_sync", "valid")
REGION_STREAM_DIM = len(REGION_STREAM_NAMES)
PER_REGION = 2


def region_window_features(arrays: Mapping[str, np.ndarray], *, frame_size: tuple[int, int] | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(features [W, REGION_STREAM_DIM] float32, window times [W, 2] s) of a record's pose track."""
    bounds, tracks = body_tracks(arrays, _JOINTS, frame_size=frame_size)
    out = np.zeros((bounds.shape[0], REGION_STREAM_DIM), dtype=np.float64)
    if tracks is None:
        return out.astype(np.float32), bounds.astype(np.float32)
    idx, fps = tracks.idx, tracks.fps
    hand_rel = tracks.rel[:, [_LI, _RI]] - tracks.rel[:, [_LW, _RW]]
    hand_ok = tracks.point_ok[:, [_LI, _RI]] & tracks.point_ok[:, [_LW, _RW]]
    hand_vel, hand_vok = _velocity(hand_rel, hand_ok, fps)
    # region -> (velocities [G, 2], where defined [G], where the landmark is seen [G])
    series = {
        "face_head": (tracks.vel[:, _NOSE], tracks.vel_ok[:, _NOSE], tracks.point_ok[:, _NOSE]),
        "left_arm": (tracks.vel[:, _LW], tracks.vel_ok[:, _LW], tracks.point_ok[:, _LW]),
        "right_arm": (tracks.vel[:, _RW], tracks.vel_ok[:, _RW], tracks.point_ok[:, _RW]),
        "left_hand": (hand_vel[:, 0], hand_vok[:, 0], hand_ok[:, 0]),
        "right_hand": (hand_vel[:, 1], hand_vok[:, 1], hand_ok[:, 1]),
        "left_leg": (tracks.vel[:, _LA], tracks.vel_ok[:, _LA], tracks.point_ok[:, _LA]),
        "right_leg": (tracks.vel[:, _RA], tracks.vel_ok[:, _RA], tracks.point_ok[:, _RA]),
        "trunk": (tracks.trunk_vel, tracks.trunk_ok, tracks.torso_ok),
    }
    speeds = {}
    for k, name in enumerate(REGION_NAMES):
        vel, vok, seen = series[name]
        v, m = vel[idx], vok[idx].astype(np.float64)  # [W, n, 2], [W, n]
        speed = np.linalg.norm(v, axis=-1)
        speeds[name] = (speed, m)
        ok = seen[idx].mean(axis=1) >= MIN_COVERAGE
        rms = np.sqrt(_masked_mean(speed**2, m))
        share, _peak = _spectrum(v, m, fps)
        out[:, PER_REGION * k] = np.where(ok, np.log10(np.maximum(rms, ENERGY_FLOOR)) + 1.0, 0.0)
        out[:, PER_REGION * k + 1] = np.where(ok, (share - 0.5) / 0.5, 0.0)
    for column, (left, right) in ((-3, ("left_arm", "right_arm")), (-2, ("left_leg", "right_leg"))):
        (a, ma), (b, mb) = speeds[left], speeds[right]
        out[:, column] = _masked_corr(a, b, ma * mb)
    valid = tracks.torso_ok[idx].mean(axis=1) >= MIN_COVERAGE
    out[:, -1] = valid
    out[~valid] = 0.0
    return np.clip(out, -CLIP, CLIP).astype(np.float32), bounds.astype(np.float32)
