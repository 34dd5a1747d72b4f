"""The de-identified seizure record: schema, keys, and its one reader and writer.

A record is a directory `<store>/records/<record_id>/` holding `meta.json`
(scalars) and `arrays.npz` (numpy arrays, loaded with allow_pickle=False).
It carries pseudonyms, landmarks, snippet features and relative times only:
no frame, file name, original identifier or date. See docs/record-schema.md.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semiofed.common.constants import STCNN_INPUT_FRAME
from semiofed.common.errors import RecordError
from semiofed.common.files import make_private_dir, npz_bytes, publish_dir, write_bytes_atomic, write_json_atomic

SCHEMA_VERSION = 1

META_FILE = "meta.json"
STAGING_PREFIX = ".staging-"
ARRAYS_FILE = "arrays.npz"

# Array keys (docs/record-schema.md gives shapes and frames of reference).
FRAME_TIMES = "frame_times"  # [T] float32, seconds from video start
ROTATION = "rotation"  # [T] int16, degrees clockwise applied before detection
POSE = "pose"  # [T, 33, 4] float32: x, y, z, visibility
POSE_MASK = "pose_mask"  # [T] bool
HANDS = "hands"  # [T, 2, 21, 3] float32: hand 0 = left, 1 = right (MediaPipe handedness)
HANDS_MASK = "hands_mask"  # [T, 2] bool
FACE = "face"  # [T, F, 3] float32: the documented face-landmark subset
FACE_MASK = "face_mask"  # [T] bool
FACE_BLENDSHAPES = "face_blendshapes"  # [T, 52] float32 expression coefficients
HEAD_POSE = "head_pose"  # [T, 3] float32: yaw, pitch, roll in degrees
SNIPPET_FEATURES = "snippet_features"  # [S, D] float32 STCNN features
SNIPPET_TIMES = "snippet_times"  # [S, 2] float32 start and end seconds

ARRAY_KEYS = (
    FRAME_TIMES,
    ROTATION,
    POSE,
    POSE_MASK,
    HANDS,
    HANDS_MASK,
    FACE,
    FACE_MASK,
    FACE_BLENDSHAPES,
    HEAD_POSE,
    SNIPPET_FEATURES,
    SNIPPET_TIMES,
)

STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Labels and views are free text in a manifest: keep them to a short token so
# that no name or date can hide in them.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


@dataclass
class SeizureRecord:
    """One seizure, de-identified: pseudonyms, clinical timing, landmarks and features."""

    record_id: str
    patient_pseudonym: str
    label: str
    fps: float
    duration_s: float
    arrays: dict[str, np.ndarray]
    onset_s: float | None = None
    offset_s: float | None = None
    generalization_s: float | None = None
    view: str | None = None
    # the side of the lateralised limb signs from the clinical label ("left"/"right"), None when not given
    side: str | None = None
    stcnn: str = ""
    # how the STCNN saw the frames (common/constants.py STCNN_INPUTS); records from before it was stored: GESTURES'
    stcnn_input: str = ""
    snippet_frames: int = 8
    models: dict[str, str] = field(default_factory=dict)
    detection_rate: dict[str, float] = field(default_factory=dict)
    # width, height of the frame the landmarks refer to, before rotation
    frame_size: tuple[int, int] | None = None
    # how the patient was found (client/deid/patient_search.py: enhancement, exposure, region, thresholds)
    capture: dict[str, Any] = field(default_factory=dict)
    # per landmark stream: the share of frames detected; for the pose also kept as plausible (landmark_quality.py)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of frames at the record's fps."""
        return int(self.arrays[FRAME_TIMES].shape[0])

    @property
    def n_snippets(self) -> int:
        """Number of STCNN snippets."""
        return int(self.arrays[SNIPPET_FEATURES].shape[0])

    @property
    def feature_dim(self) -> int:
        """Dimension of one STCNN snippet feature."""
        return int(self.arrays[SNIPPET_FEATURES].shape[1])

    def meta(self) -> dict[str, Any]:
        """The JSON-serialisable scalars of the record."""
        return {
            "schema_version": SCHEMA_VERSION,
            "record_id": self.record_id,
            "status": STATUS_OK,
            "patient_pseudonym": self.patient_pseudonym,
            "label": self.label,
            "onset_s": self.onset_s,
            "offset_s": self.offset_s,
            "generalization_s": self.generalization_s,
            "view": self.view,
            "side": self.side,
            "fps": self.fps,
            "duration_s": self.duration_s,
            "n_frames": self.n_frames,
            "n_snippets": self.n_snippets,
            "feature_dim": self.feature_dim,
            "stcnn": self.stcnn,
            "stcnn_input": self.stcnn_input,
            "snippet_frames": self.snippet_frames,
            "models": dict(sorted(self.models.items())),
            "detection_rate": dict(sorted(self.detection_rate.items())),
            "frame_size": list(self.frame_size) if self.frame_size else None,
            "capture": self.capture,
            "quality": self.quality,
        }


def validate_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Raise RecordError unless the arrays have the schema's keys and consistent lengths."""
    missing = [k for k in ARRAY_KEYS if k not in arrays]
    if missing:
        raise RecordError(f"record arrays lack {', '.join(missing)}", "re-run `semiofed site prepare`")
    n_frames = arrays[FRAME_TIMES].shape[0]
    for key in (ROTATION, POSE, POSE_MASK, HANDS, HANDS_MASK, FACE, FACE_MASK, FACE_BLENDSHAPES, HEAD_POSE):
        if arrays[key].shape[0] != n_frames:
            raise RecordError(f"record array {key} has {arrays[key].shape[0]} frames, expected {n_frames}")
    if arrays[SNIPPET_TIMES].shape[0] != arrays[SNIPPET_FEATURES].shape[0]:
        raise RecordError("record snippet_times and snippet_features differ in length")


def write_record(records_dir: Path, record: SeizureRecord) -> Path:
    """Write a record atomically: staged in a hidden directory, then renamed into place."""
    validate_arrays(record.arrays)
    make_private_dir(records_dir)
    staging = make_private_dir(records_dir / f"{STAGING_PREFIX}{record.record_id}")
    try:
        write_bytes_atomic(staging / ARRAYS_FILE, npz_bytes([(k, record.arrays[k]) for k in ARRAY_KEYS]))
        write_json_atomic(staging / META_FILE, record.meta())
        final = records_dir / record.record_id
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def remove_stale_staging(records_dir: Path) -> int:
    """Delete staging directories a killed process left behind; return how many."""
    stale = list(records_dir.glob(f"{STAGING_PREFIX}*")) if records_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def read_meta(record_dir: Path) -> dict[str, Any]:
    """Read and check a record's meta.json."""
    path = record_dir / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"record metadata {path} is unreadable ({exc})", "re-run `semiofed site prepare`") from exc
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(
            f"record {path.parent.name} has schema {meta.get('schema_version')}, this semiofed reads {SCHEMA_VERSION}",
            "re-run `semiofed site prepare` with this version",
        )
    return meta


def read_record(record_dir: Path) -> SeizureRecord:
    """Load a record (meta and arrays) from its directory."""
    meta = read_meta(record_dir)
    path = record_dir / ARRAYS_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise RecordError(f"record arrays {path} are unreadable ({exc})", "re-run `semiofed site prepare`") from exc
    validate_arrays(arrays)
    return SeizureRecord(
        record_id=meta["record_id"],
        patient_pseudonym=meta["patient_pseudonym"],
        label=meta["label"],
        fps=float(meta["fps"]),
        duration_s=float(meta["duration_s"]),
        arrays=arrays,
        onset_s=meta.get("onset_s"),
        offset_s=meta.get("offset_s"),
        generalization_s=meta.get("generalization_s"),
        view=meta.get("view"),
        side=meta.get("side"),
        stcnn=meta.get("stcnn", ""),
        stcnn_input=meta.get("stcnn_input", STCNN_INPUT_FRAME if meta.get("stcnn") else ""),
        snippet_frames=int(meta.get("snippet_frames", 8)),
        models=meta.get("models", {}),
        detection_rate=meta.get("detection_rate", {}),
        frame_size=tuple(meta["frame_size"]) if meta.get("frame_size") else None,
        capture=meta.get("capture", {}),
        quality=meta.get("quality", {}),
    )
