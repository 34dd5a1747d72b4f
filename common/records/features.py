"""Model inputs from a de-identified record: per-snippet streams and segment sampling.

Two streams per STCNN snippet: the STCNN feature itself and the keypoint
stream, the torso-normalised motion descriptors (common/records/motion.py) of
the 3 s window around the snippet. Everything here depends on one record only, so no
statistic of other patients leaks into a patient's inputs.
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

from semiofed.common.constants import STREAM_KEYPOINTS, STREAM_STCNN, STREAMS  # noqa: F401

# 2: the keypoint stream is the window motion descriptors of common/records/motion.py (version 1 was per-snippet
# coordinate means, spreads and speeds, which hid the seizure under position and missing hands).
KEYPOINT_FEATURES_VERSION = 2
# The motion descriptors of the window around each snippet, and whether that window was valid.
KEYPOINT_DIM = MOTION_DIM + 1



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
    """The identity of the STCNN that made a record's snippet features: name, weights sha256, dim."""
    key = STCNN_WEIGHT_KEYS.get(record.stcnn, "")
    return {"name": record.stcnn, "sha256": record.models.get(key, ""), "dim": record.feature_dim}


def keypoint_snippet_features(record: SeizureRecord) -> np.ndarray:
    """Per-snippet keypoint stream [S, KEYPOINT_DIM] (float32): the motion descriptors of the window centred nearest
    each snippet's centre, then the window's validity (1 or 0). Fixed public scaling: see common/records/motion.py."""
    snippets = record.arrays[SNIPPET_TIMES].astype(np.float64)
    out = np.zeros((snippets.shape[0], KEYPOINT_DIM), dtype=np.float32)
    if snippets.shape[0] == 0 or record.arrays[FRAME_TIMES].shape[0] == 0:
        return out
    feats, bounds, valid = window_features(record.arrays, frame_size=record.frame_size)
    centres = bounds.astype(np.float64).mean(axis=1)
    nearest = np.abs(snippets.mean(axis=1)[:, None] - centres[None, :]).argmin(axis=1)
    out[:, :MOTION_DIM] = feats[nearest]
    out[:, MOTION_DIM] = valid[nearest]
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
