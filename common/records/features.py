"""Model inputs from a de-identified record: per-snippet streams and segment sampling.

Three streams per STCNN snippet: the STCNN feature itself; the keypoint
stream, the torso-normalised motion descriptors (common/records/motion.py) of
the 3 s window around the snippet; and the STCNN motion stream, how much the
STCNN feature changed over the last 2 s and 4 s relative to the record's own
feature size. The STCNN feature itself also encodes the scene (camera view,
bed, room); its change over time is the movement. Everything here depends on
one record only, so no statistic of other patients leaks into a patient's
inputs.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.common.models.registry import I3D_KINETICS400, R2PLUS1D_18_KINETICS400
from semiofed.common.records.motion import MOTION_DIM, MOTION_FEATURE_NAMES, check_descriptors, window_features
from semiofed.common.records.schema import FRAME_TIMES, SNIPPET_FEATURES, SNIPPET_TIMES, SeizureRecord

log = logging.getLogger(__name__)

from semiofed.common.constants import (  # noqa: F401
    STCNN_STREAMS,
    STREAM_KEYPOINTS,
    STREAM_REGIONS,
    STREAM_SIDE,
    STREAM_STCNN,
    STREAM_STCNN_MOTION,
    STREAMS,
)
from semiofed.common.records.region_motion import REGION_STREAM_DIM, region_window_features  # noqa: E402,F401
from semiofed.common.records.side import SIDE_DIM, side_window_features  # noqa: E402,F401

# 2: the keypoint stream is the window motion descriptors of common/records/motion.py (version 1 was per-snippet
# coordinate means, spreads and speeds, which hid the seizure under position and missing hands).
KEYPOINT_FEATURES_VERSION = 2
# The motion descriptors of the window around each snippet, and whether that window was valid.
KEYPOINT_DIM = MOTION_DIM + 1


# The STCNN motion stream: the change of the STCNN feature over these spans (one and two ~2 s STCNN windows), as a
# share of the record's mean feature norm, on a fixed public log scale: log10(change) + 1 over 0.5, clipped.
STCNN_MOTION_LAGS_S = (2.0, 4.0)
STCNN_MOTION_DIM = len(STCNN_MOTION_LAGS_S)
_STCNN_MOTION_FLOOR = 1e-3  # a change below this share of the feature is no movement
_STCNN_MOTION_OFFSET, _STCNN_MOTION_SCALE, _STCNN_MOTION_CLIP = -1.0, 0.5, 3.0


def keypoint_columns(descriptors: Sequence[str]) -> tuple[int, ...]:
    """Columns of the keypoint stream a model reads: the named descriptors, then the window's validity.

    An empty selection means every column."""
    if not descriptors:
        return tuple(range(KEYPOINT_DIM))
    return tuple(MOTION_FEATURE_NAMES.index(d) for d in check_descriptors(tuple(descriptors))) + (MOTION_DIM,)


# Registry key of the weights behind each STCNN name written by `site prepare`.
STCNN_WEIGHT_KEYS = {"i3d": I3D_KINETICS400.key, "r2plus1d": R2PLUS1D_18_KINETICS400.key}


def check_streams(streams: Sequence[str]) -> tuple[str, ...]:
    """Return the streams as a canonical tuple, or say which are valid."""
    chosen = tuple(s for s in STREAMS if s in set(streams))
    unknown = sorted(set(streams) - set(STREAMS))
    if unknown or not chosen:
        raise SemiofedError(f"unknown or empty stream selection {list(streams)}", f"use one or both of {list(STREAMS)}")
    return chosen


def feature_extractor_of(record: SeizureRecord) -> dict[str, object]:
    """The identity of the STCNN that made a record's snippet features: name, weights sha256, dim, and what it saw."""
    key = STCNN_WEIGHT_KEYS.get(record.stcnn, "")
    return {"name": record.stcnn, "sha256": record.models.get(key, ""), "dim": record.feature_dim,
            "input": record.stcnn_input}


def _nearest_windows(snippets: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """[S] the index of the window [W, 2] whose centre is nearest each snippet's [S, 2] centre."""
    centres = bounds.astype(np.float64).mean(axis=1)
    return np.abs(snippets.mean(axis=1)[:, None] - centres[None, :]).argmin(axis=1)


def keypoint_snippet_features(record: SeizureRecord) -> np.ndarray:
    """Per-snippet keypoint stream [S, KEYPOINT_DIM] (float32): the motion descriptors of the window centred nearest
    each snippet's centre, then the window's validity (1 or 0). Fixed public scaling: see common/records/motion.py."""
    snippets = record.arrays[SNIPPET_TIMES].astype(np.float64)
    out = np.zeros((snippets.shape[0], KEYPOINT_DIM), dtype=np.float32)
    if snippets.shape[0] == 0 or record.arrays[FRAME_TIMES].shape[0] == 0:
        return out
    feats, bounds, valid = window_features(record.arrays, frame_size=record.frame_size)
    nearest = _nearest_windows(snippets, bounds)
    out[:, :MOTION_DIM] = feats[nearest]
    out[:, MOTION_DIM] = valid[nearest]
    return out


def _windows_per_snippet(record: SeizureRecord, window_stream, width: int) -> np.ndarray:
    """[S, width] float32: `window_stream(arrays, frame_size=)`'s (features [W, width], bounds [W, 2]) taken at the
    window centred nearest each snippet's centre; zeros without snippets, frames or windows."""
    snippets = record.arrays[SNIPPET_TIMES].astype(np.float64)
    out = np.zeros((snippets.shape[0], width), dtype=np.float32)
    if snippets.shape[0] == 0 or record.arrays[FRAME_TIMES].shape[0] == 0:
        return out
    feats, bounds = window_stream(record.arrays, frame_size=record.frame_size)
    return feats[_nearest_windows(snippets, bounds)] if bounds.shape[0] else out


def region_snippet_features(record: SeizureRecord) -> np.ndarray:
    """Per-snippet body-region stream [S, REGION_STREAM_DIM] (float32): the region descriptors of the window centred
    nearest each snippet's centre (common/records/region_motion.py)."""
    return _windows_per_snippet(record, region_window_features, REGION_STREAM_DIM)


def side_snippet_features(record: SeizureRecord) -> np.ndarray:
    """Per-snippet side stream [S, SIDE_DIM] (float32): the left-minus-right differences of the window centred
    nearest each snippet's centre (common/records/side.py)."""
    return _windows_per_snippet(record, side_window_features, SIDE_DIM)


def stcnn_motion_features(record: SeizureRecord) -> np.ndarray:
    """Per-snippet STCNN motion stream [S, STCNN_MOTION_DIM] (float32): for each lag of STCNN_MOTION_LAGS_S, the
    distance between the snippet's STCNN feature and the one a lag earlier (the first snippets, which have no past:
    the first such change), divided by the record's mean feature norm, on the fixed public scale above.

    A static scene gives the same feature at every time, so it cancels; what is left is how much, and how steadily,
    the patient's movement changed what the network saw (the measure of docs/benchmarks.md's STCNN section)."""
    features = np.nan_to_num(record.arrays[SNIPPET_FEATURES].astype(np.float64))
    out = np.zeros((features.shape[0], STCNN_MOTION_DIM), dtype=np.float64)
    norms = np.linalg.norm(features, axis=1) if features.size else np.zeros(0)
    size = float(norms.mean()) if norms.size else 0.0
    snippet_s = record.snippet_frames / record.fps if record.fps > 0 else 0.0
    if size <= 0.0 or snippet_s <= 0.0:
        return out.astype(np.float32)
    for column, lag_s in enumerate(STCNN_MOTION_LAGS_S):
        lag = max(1, int(round(lag_s / snippet_s)))
        if features.shape[0] <= lag:
            out[:, column] = _STCNN_MOTION_FLOOR
            continue
        change = np.linalg.norm(features[lag:] - features[:-lag], axis=1) / size
        out[lag:, column] = change
        out[:lag, column] = change[0]
    scaled = (np.log10(np.maximum(out, _STCNN_MOTION_FLOOR)) - _STCNN_MOTION_OFFSET) / _STCNN_MOTION_SCALE
    return np.clip(scaled, -_STCNN_MOTION_CLIP, _STCNN_MOTION_CLIP).astype(np.float32)


def record_inputs(record: SeizureRecord, streams: Sequence[str]) -> np.ndarray:
    """The model input of every snippet of a record: the chosen streams concatenated, [S, D_in]."""
    parts = []
    for stream in check_streams(streams):
        if stream in STCNN_STREAMS and record.feature_dim == 0:
            raise SemiofedError(f"record {record.record_id} has no STCNN features, the '{stream}' stream needs them",
                                "re-run `semiofed site prepare` with the STCNN (all streams), or train on keypoints only")
        if stream == STREAM_STCNN:
            parts.append(np.nan_to_num(record.arrays[SNIPPET_FEATURES].astype(np.float32)))
        elif stream == STREAM_STCNN_MOTION:
            parts.append(stcnn_motion_features(record))
        elif stream == STREAM_REGIONS:
            parts.append(region_snippet_features(record))
        elif stream == STREAM_SIDE:
            parts.append(side_snippet_features(record))
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
