"""MediaPipe pose, hand and face landmark streams that turn video frames into de-identified landmark arrays.

Frame of reference. Every landmark is in MediaPipe's normalised image
coordinates of the *processed* frame: the decoded frame cropped to the
manifest's ROI (`rotation.crop_roi`), then rotated clockwise by the window's
rotation (`rotation.rotate`). x runs right and y down, both in [0, 1] of the
processed frame's width and height; z is MediaPipe's relative depth (about
the scale of x, smaller is nearer the camera). x and y are fractions of
different lengths, so to recover true proportions store the processed
frame's width and height (`rotated_frames.shape[2]`, `.shape[1]`; equivalently
the cropped frame's size, swapped when the rotation is 90 or 270) and
multiply x by the width and y by the height.

Left and right. Every 'left'/'right' here is the *subject's*: MediaPipe
documents hand handedness ("Left and Right handedness correspond to the
subject's hands, not the viewer"; HandLandmarkerResult), blendshapes ("*Left
and *Right blendshapes correspond to the subject's face, not the viewer"),
pose (LEFT_WRIST = 15 ...) and face-mesh groups (FACE_LANDMARKS_LEFT_EYE)
the same way. A horizontally mirrored (selfie) video swaps them all.

Threads. The three streams share nothing, so a caller may run
`PoseStream.process`, `HandStream.process` and `FaceStream.process` on
separate threads over the same (read-only) frames; MediaPipe runs each
landmarker's C calls on its own worker thread without the GIL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision

from semiofed.common.constants import LANDMARK_STREAMS, STREAM_FACE, STREAM_HANDS, STREAM_POSE
from semiofed.common.errors import ModelFileError
from semiofed.common.models.registry import verified_path
from semiofed.common.records.schema import (
    FACE,
    FACE_BLENDSHAPES,
    FACE_MASK,
    HANDS,
    HANDS_MASK,
    HEAD_POSE,
    POSE,
    POSE_MASK,
)

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]  # schema key -> array, one row per frame

N_POSE = 33
N_HAND = 21
N_BLENDSHAPES = 52
HAND_SLOTS = {"Left": 0, "Right": 1}  # MediaPipe's handedness label -> index in HANDS

# The face subset kept from the 478-point Face Mesh. A dense mesh is
# biometric (it encodes face shape); semiology needs eye closure and gaze,
# mouth automatisms, facial asymmetry/clonus and head version, so only these
# groups are kept. Indices from MediaPipe's FaceLandmarksConnections;
# right/left are the subject's.
FACE_GROUPS: dict[str, tuple[int, ...]] = {
    # corners 33 (outer), 133 (inner); upper lid 160, 159, 158; lower lid 144, 145, 153
    # (33, 160, 158, 133, 153, 144 are the six eye-aspect-ratio points)
    "right_eye": (33, 133, 160, 159, 158, 144, 145, 153),
    # corners 263 (outer), 362 (inner); upper lid 387, 386, 385; lower lid 373, 374, 380
    "left_eye": (263, 362, 387, 386, 385, 373, 374, 380),
    # iris centres, right 468 and left 473: gaze deviation (no iris texture is kept)
    "irises": (468, 473),
    "right_brow": (70, 105, 107),  # outer, middle, inner
    "left_brow": (300, 334, 336),  # outer, middle, inner
    # corners 61, 291; upper lip 39, 0, 269; lower lip 181, 17, 405
    "lips_outer": (61, 291, 39, 0, 269, 181, 17, 405),
    # corners 78, 308; upper 82, 13, 312; lower 87, 14, 317 (mouth opening)
    "lips_inner": (78, 308, 82, 13, 312, 87, 14, 317),
    "nose": (1, 168),  # tip, bridge between the eyes
    "chin": (152,),
    # forehead top 10, sides 234 (right) and 454 (left), jaw angles 172 (right) and 397 (left)
    "face_oval": (10, 234, 454, 172, 397),
}
FACE_INDICES: tuple[int, ...] = tuple(i for group in FACE_GROUPS.values() for i in group)
N_FACE = len(FACE_INDICES)


# ---------------------------------------------------------------- frames


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Return frames unchanged if they are a uint8 RGB array [N, H, W, 3], else raise ValueError saying so."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"frames must be a uint8 RGB array [N, H, W, 3], got {dtype} {shape}; decode to rgb24")
    return frames


def mp_image(frame: np.ndarray) -> mp.Image:
    """One RGB frame [H, W, 3] as a MediaPipe image."""
    # mp.Image copies from the raw buffer, so it must be contiguous (a crop is not).
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))


# ---------------------------------------------------------------- streams


def base_options(key: str, model_dir: Path | str | None) -> BaseOptions:
    """MediaPipe options naming the verified model file `key`."""
    return BaseOptions(model_asset_path=str(verified_path(key, model_dir)))


_NATIVE_STDERR = threading.Lock()


@contextlib.contextmanager
def _native_warnings_silenced() -> Iterator[None]:
    """Discard what MediaPipe's C++ graph prints to stderr while a landmarker starts (unless --verbose).

    Every landmarker start prints some ten absl warnings that no setting
    turns off (glog variables are ignored), once per video. The
    process's stderr (fd 2) points at /dev/null for the call only;
    failures still raise with MediaPipe's own message.
    """
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    with _NATIVE_STDERR:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


def create_landmarker(factory: Any, options: Any, key: str) -> Any:
    """Start a MediaPipe landmarker, quietly; a model that does not load raises ModelFileError."""
    try:
        with _native_warnings_silenced():
            return factory.create_from_options(options)
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(
            f"MediaPipe could not load model {key} from {options.base_options.model_asset_path} ({exc})",
            "check that mediapipe is installed intact, or delete the file and run `semiofed models fetch`",
        ) from exc


class VideoStream:
    """One MediaPipe landmarker in VIDEO mode: frames in, that stream's schema arrays out."""

    name = ""  # the stream, one of LANDMARK_STREAMS
    model_key = ""  # registry key of its model file

    def __init__(self, landmarker: Any) -> None:
        self._landmarker = landmarker
        self._last_ms: int | None = None

    def process(self, frames: np.ndarray, timestamps_ms: np.ndarray) -> Arrays:
        """Detect on frames [N, H, W, 3] uint8 RGB at strictly increasing timestamps (ms)."""
        frames = check_frames(frames)
        stamps = [int(t) for t in np.asarray(timestamps_ms).reshape(-1)]
        if len(stamps) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(stamps)} timestamps; pass one timestamp per frame")
        previous = self._last_ms
        for t in stamps:
            if previous is not None and t <= previous:
                raise ValueError(
                    f"{self.name} stream timestamps must increase strictly across calls, "
                    f"got {t} ms after {previous} ms; "
                    "use the frames' presentation times, or a new stream for a new video"
                )
            previous = t
        out = empty_arrays(self.name, len(frames))
        for i, (frame, t) in enumerate(zip(frames, stamps)):
            self._fill(out, i, self._landmarker.detect_for_video(mp_image(frame), t))
        if stamps:
            self._last_ms = stamps[-1]
        return out

    def _fill(self, out: Arrays, i: int, result: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the MediaPipe landmarker."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PoseStream(VideoStream):
    """MediaPipe Pose Landmarker (full): POSE [N, 33, 4] (x, y, z, visibility) and POSE_MASK [N].

    num_poses=1: MediaPipe then keeps its highest-scoring person detection
    (it has no "most prominent person" option) and tracks it across frames.
    """

    name = STREAM_POSE
    model_key = "pose_landmarker_full"

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        min_detection_confidence: float = 0.5,
        # Measured on the shared clips at 15 fps (VIDEO mode): presence and tracking
        # at 0.3 keep a found person through partial views (arm wrestling: 53% -> 86%
        # of frames, basketball 94%, full body 100%) without more false detections.
        min_presence_confidence: float = 0.3,
        min_tracking_confidence: float = 0.3,
    ) -> None:
        options = vision.PoseLandmarkerOptions(
            base_options=base_options(self.model_key, model_dir),
            running_mode=vision.RunningMode.VIDEO,
            num_poses=1,
            min_pose_detection_confidence=min_detection_confidence,
            min_pose_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        super().__init__(create_landmarker(vision.PoseLandmarker, options, self.model_key))

    def _fill(self, out: Arrays, i: int, result: Any) -> None:
        if result.pose_landmarks:
            out[POSE][i] = pose_array(result.pose_landmarks[0])
            out[POSE_MASK][i] = True


def pose_array(landmarks: Sequence[Any]) -> np.ndarray:
    """MediaPipe pose landmarks as [33, 4] float32 (x, y, z, visibility)."""
    return np.array([(p.x, p.y, p.z, p.visibility or 0.0) for p in landmarks], dtype=np.float32)


class HandStream(VideoStream):
    """MediaPipe Hand Landmarker: HANDS [N, 2, 21, 3], HANDS_MASK [N, 2]; slot 0 = 'Left', 1 = 'Right'.

    The slot is MediaPipe's handedness label, which names the subject's hand
    in an unmirrored image. When both hands get the same label (two people,
    or a misclassified hand), the more confident one keeps the slot and the
    other is dropped rather than stored under the wrong side.
    """

    name = STREAM_HANDS
    model_key = "hand_landmarker"

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        options = vision.HandLandmarkerOptions(
            base_options=base_options(self.model_key, model_dir),
            running_mode=vision.RunningMode.VIDEO,
            num_hands=2,
            min_hand_detection_confidence=min_detection_confidence,
            min_hand_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        super().__init__(create_landmarker(vision.HandLandmarker, options, self.model_key))

    def _fill(self, out: Arrays, i: int, result: Any) -> None:
        best = [-1.0, -1.0]
        for handedness, landmarks in zip(result.handedness, result.hand_landmarks):
            if not handedness:
                continue
            slot = HAND_SLOTS.get(handedness[0].category_name)
            score = handedness[0].score or 0.0
            if slot is None or score <= best[slot]:
                continue
            best[slot] = score
            out[HANDS][i, slot] = np.array([(p.x, p.y, p.z) for p in landmarks], dtype=np.float32)
            out[HANDS_MASK][i, slot] = True


class FaceStream(VideoStream):
    """MediaPipe Face Landmarker: FACE [N, F, 3] (the FACE_GROUPS subset), blendshapes [N, 52], HEAD_POSE [N, 3]."""

    name = STREAM_FACE
    model_key = "face_landmarker"

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        options = vision.FaceLandmarkerOptions(
            base_options=base_options(self.model_key, model_dir),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=1,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        super().__init__(create_landmarker(vision.FaceLandmarker, options, self.model_key))

    def _fill(self, out: Arrays, i: int, result: Any) -> None:
        if not result.face_landmarks:
            return
        landmarks = result.face_landmarks[0]
        # Only the subset is ever read: the full mesh does not leave this function.
        out[FACE][i] = np.array([(landmarks[j].x, landmarks[j].y, landmarks[j].z) for j in FACE_INDICES], np.float32)
        out[FACE_MASK][i] = True
        if result.face_blendshapes:
            for category in result.face_blendshapes[0]:
                if 0 <= category.index < N_BLENDSHAPES:
                    out[FACE_BLENDSHAPES][i, category.index] = category.score
        if result.facial_transformation_matrixes:
            out[HEAD_POSE][i] = head_pose_degrees(result.facial_transformation_matrixes[0])


def head_pose_degrees(matrix: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll (degrees) of MediaPipe's 4x4 facial transformation matrix.

    The matrix maps the canonical face (facing the camera) into MediaPipe's
    metric camera space: x right, y up, z towards the viewer. Its rotation is
    read as R = Rz(roll) @ Ry(yaw) @ Rx(pitch). Signs: yaw > 0 turns the face
    towards the viewer's right (the subject's left), pitch > 0 tilts it
    down, roll > 0 turns it counter-clockwise in the image. 0, 0, 0 is a face
    looking straight into the camera.
    """
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    r = r / np.linalg.norm(r, axis=0, keepdims=True).clip(min=1e-9)  # drop any uniform scale
    yaw = math.atan2(-r[2, 0], math.hypot(r[2, 1], r[2, 2]))
    pitch = math.atan2(r[2, 1], r[2, 2])
    roll = math.atan2(r[1, 0], r[0, 0])
    return np.degrees(np.array([yaw, pitch, roll])).astype(np.float32)


def empty_arrays(stream: str, n: int) -> Arrays:
    """Zero arrays with all masks False for one stream and n frames (what 'nothing found' looks like)."""
    if stream == STREAM_POSE:
        return {POSE: np.zeros((n, N_POSE, 4), np.float32), POSE_MASK: np.zeros(n, bool)}
    if stream == STREAM_HANDS:
        return {HANDS: np.zeros((n, 2, N_HAND, 3), np.float32), HANDS_MASK: np.zeros((n, 2), bool)}
    if stream == STREAM_FACE:
        return {
            FACE: np.zeros((n, N_FACE, 3), np.float32),
            FACE_MASK: np.zeros(n, bool),
            FACE_BLENDSHAPES: np.zeros((n, N_BLENDSHAPES), np.float32),
            HEAD_POSE: np.zeros((n, 3), np.float32),
        }
    raise ValueError(f"unknown stream '{stream}'; use one of {', '.join(LANDMARK_STREAMS)}")


def detection_rate(arrays: Arrays) -> dict[str, float]:
    """Fraction of frames where each stream found the person (hands: at least one hand)."""
    rates: dict[str, float] = {}
    for stream, key in ((STREAM_POSE, POSE_MASK), (STREAM_HANDS, HANDS_MASK), (STREAM_FACE, FACE_MASK)):
        if key in arrays:
            mask = np.asarray(arrays[key])
            present = mask.any(axis=1) if mask.ndim == 2 else mask
            rates[stream] = float(present.mean()) if present.size else 0.0
    return rates


# The landmarker class of each stream, in LANDMARK_STREAMS order.
STREAM_CLASSES: dict[str, type[VideoStream]] = {
    STREAM_POSE: PoseStream,
    STREAM_HANDS: HandStream,
    STREAM_FACE: FaceStream,
}
