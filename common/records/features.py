"""Model inputs from a de-identified record: per-snippet streams and segment sampling.

Two streams per STCNN snippet: the STCNN feature itself and a keypoint-motion
summary (body-normalised pose and hand positions and velocities, pooled over
the frames of the snippet). Everything here depends on one record only, so no
statistic of other patients leaks into a patient's inputs.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.common.models.registry import I3D_KINETICS400, R2PLUS1D_18_KINETICS400
from semiofed.common.records.schema import (
    FRAME_TIMES,
    HANDS,
    HANDS_MASK,
    POSE,
    POSE_MASK,
    SNIPPET_FEATURES,
    SNIPPET_TIMES,
    SeizureRecord,
)

log = logging.getLogger(__name__)

from semiofed.common.constants import STREAM_KEYPOINTS, STREAM_STCNN, STREAMS  # noqa: F401

KEYPOINT_FEATURES_VERSION = 1
# 33 pose + 2x21 hand joints, x and y each.
_N_COORDS = (33 + 2 * 21) * 2
# mean position, std of position, mean speed per coordinate; 3 detection rates.
KEYPOINT_DIM = 3 * _N_COORDS + 3

# Registry key of the weights behind each STCNN name written by `site prepare`.
STCNN_WEIGHT_KEYS = {"i3d": I3D_KINETICS400.key, "r2plus1d": R2PLUS1D_18_KINETICS400.key}

# MediaPipe pose indices used to normalise the body.
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 11, 12, 23, 24
# Velocities beyond this many torso lengths per second are tracking glitches.
_MAX_SPEED = 20.0


def check_streams(streams: Sequence[str]) -> tuple[str, ...]:
    """Return the streams as a canonical tuple, or say which are valid."""
    chosen = tuple(s for s in STREAMS if s in set(streams))
    unknown = sorted(set(streams) - set(STREAMS))
    if unknown or not chosen:
        raise SemiofedError(f"unknown or empty stream selection {list(streams)}", f"use one or both of {list(STREAMS)}")
    return chosen


def feature_extractor_of(record: SeizureRecord) -> dict[str, object]:
    """The identity of the STCNN that made a record's snippet features: name, weights sha256, dim."""
    key = STCNN_WEIGHT_KEYS.get(record.stcnn, "")
    return {"name": record.stcnn, "sha256": record.models.get(key, ""), "dim": record.feature_dim}


def _body_frame(pose: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (hip midpoint, else shoulder midpoint) and scale (torso length), robust over the record."""
    if not valid.any():
        return np.array([0.5, 0.5], dtype=np.float32), 1.0
    p = pose[valid, :, :2]
    shoulders = p[:, [_L_SHOULDER, _R_SHOULDER]].mean(axis=1)
    hips = p[:, [_L_HIP, _R_HIP]].mean(axis=1)
    centre = np.median(hips, axis=0)
    torso = float(np.median(np.linalg.norm(shoulders - hips, axis=1)))
    return centre.astype(np.float32), max(torso, 1e-3)


def keypoint_snippet_features(record: SeizureRecord) -> np.ndarray:
    """Per-snippet keypoint-motion features [S, KEYPOINT_DIM] (float32)."""
    a = record.arrays
    times = a[FRAME_TIMES].astype(np.float64)
    pose = np.nan_to_num(a[POSE].astype(np.float32))
    hands = np.nan_to_num(a[HANDS].astype(np.float32))
    pose_ok = a[POSE_MASK].astype(bool)
    hands_ok = a[HANDS_MASK].astype(bool)
    centre, scale = _body_frame(pose, pose_ok)
    n_frames = times.shape[0]
    pose_xy = (pose[:, :, :2] - centre) / scale * pose_ok[:, None, None]
    hands_xy = (hands[:, :, :, :2] - centre) / scale * hands_ok[:, :, None, None]
    coords = np.concatenate([pose_xy.reshape(n_frames, -1), hands_xy.reshape(n_frames, -1)], axis=1)
    coord_ok = np.concatenate(
        [np.repeat(pose_ok[:, None], 66, axis=1), np.repeat(hands_ok, 42, axis=1)], axis=1
    ).astype(np.float32)
    fps = record.fps if record.fps > 0 else 15.0
    speed = np.zeros_like(coords)
    if n_frames > 1:
        both = coord_ok[1:] * coord_ok[:-1]
        speed[1:] = np.abs(np.diff(coords, axis=0)) * fps * both
        speed = np.minimum(speed, _MAX_SPEED)
    speed_ok = np.zeros_like(coord_ok)
    speed_ok[1:] = coord_ok[1:] * coord_ok[:-1]
    snip = a[SNIPPET_TIMES].astype(np.float64)
    starts = np.searchsorted(times, snip[:, 0], side="left")
    ends = np.maximum(np.searchsorted(times, snip[:, 1], side="right"), starts + 1).clip(max=n_frames)
    out = np.zeros((snip.shape[0], KEYPOINT_DIM), dtype=np.float32)
    if n_frames == 0:
        return out
    # Cumulative sums make pooling over any window O(1).
    def csum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1, x.shape[1]), np.float64), np.cumsum(x, axis=0, dtype=np.float64)])

    c_n, c_x, c_xx = csum(coord_ok), csum(coords), csum(coords**2)
    s_n, s_v = csum(speed_ok), csum(speed)
    det = csum(np.stack([pose_ok, hands_ok[:, 0], hands_ok[:, 1]], axis=1).astype(np.float32))
    starts = starts.clip(max=n_frames - 1)
    n = np.maximum(c_n[ends] - c_n[starts], 1.0)
    mean = (c_x[ends] - c_x[starts]) / n
    var = np.maximum((c_xx[ends] - c_xx[starts]) / n - mean**2, 0.0)
    spd = (s_v[ends] - s_v[starts]) / np.maximum(s_n[ends] - s_n[starts], 1.0)
    rate = (det[ends] - det[starts]) / (ends - starts)[:, None]
    out[:] = np.concatenate([mean, np.sqrt(var), spd, rate], axis=1)
    return out


def record_inputs(record: SeizureRecord, streams: Sequence[str]) -> np.ndarray:
    """The model input of every snippet of a record: the chosen streams concatenated, [S, D_in]."""
    parts = []
    for stream in check_streams(streams):
        if stream == STREAM_STCNN:
            parts.append(np.nan_to_num(record.arrays[SNIPPET_FEATURES].astype(np.float32)))
        else:
            parts.append(keypoint_snippet_features(record))
    x = np.concatenate(parts, axis=1)
    if x.shape[0] == 0:
        raise SemiofedError(f"record {record.record_id} has no snippets", "re-run `semiofed site prepare` on a longer video")
    return x


def segment_indices(
    n_snippets: int, n_segments: int, *, train: bool, gamma: float = 2.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Snippet index for each of n equal segments: Beta(gamma, gamma) jitter when training, else the middle."""
    edges = np.linspace(0.0, float(n_snippets), n_segments + 1)
    width = edges[1:] - edges[:-1]
    if train:
        if rng is None:
            raise ValueError("segment_indices(train=True) needs rng")
        pos = edges[:-1] + rng.beta(gamma, gamma, size=n_segments) * width
    else:
        pos = edges[:-1] + 0.5 * width
    return np.clip(np.floor(pos).astype(np.int64), 0, n_snippets - 1)
