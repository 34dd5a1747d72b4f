"""MediaPipe pose, hand and face keypoint streams that turn video frames into de-identified landmark arrays.

Frame of reference. Every landmark is in MediaPipe's normalised image
coordinates of the *processed* frame: the decoded frame cropped to the
manifest's ROI (`crop_roi`), then rotated clockwise by the window's rotation
(`rotate`). x runs right and y down, both in [0, 1] of the processed frame's
width and height; z is MediaPipe's relative depth (about the scale of x,
smaller is nearer the camera). x and y are fractions of different lengths, so
to recover true proportions store the processed frame's width and height
(`rotated_frames.shape[2]`, `.shape[1]`; equivalently the cropped frame's
size, swapped when the rotation is 90 or 270) and multiply x by the width and
y by the height.

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision

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
    ROTATION,
)

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]  # schema key -> array, one row per frame

STREAMS = ("pose", "hands", "face")
ROTATIONS = (0, 90, 180, 270)
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

# A person counts as upright when the shoulders-to-nose direction is within
# 60 degrees of image-up; the slack keeps a tilted head from flipping the rotation.
UPRIGHT_COS = 0.5
_NOSE, _LEFT_SHOULDER, _RIGHT_SHOULDER = 0, 11, 12


# ---------------------------------------------------------------- frames


def crop_roi(frames: np.ndarray, roi: Sequence[float] | None) -> np.ndarray:
    """Crop frames [..., H, W, C] to roi (x0, y0, x1, y1 fractions); a view, no copy."""
    if roi is None:
        return frames
    x0, y0, x1, y1 = roi
    height, width = frames.shape[-3], frames.shape[-2]
    c0, c1 = round(x0 * width), max(round(x1 * width), round(x0 * width) + 1)
    r0, r1 = round(y0 * height), max(round(y1 * height), round(y0 * height) + 1)
    return frames[..., r0:min(r1, height), c0:min(c1, width), :]


def rotate(frames: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate frames [..., H, W, C] clockwise by a multiple of 90 degrees; C-contiguous result.

    rotate(f, 90) turns the picture a quarter turn clockwise: the top-left
    pixel becomes the top-right one. It equals np.rot90(f, k=-degrees // 90,
    axes=(-3, -2)), as np.rot90 turns counter-clockwise for positive k.
    """
    if degrees % 90:
        raise ValueError(f"rotation {degrees} is not a multiple of 90 degrees; use one of {ROTATIONS}")
    k = (-degrees // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(-3, -2)) if k else frames)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"frames must be a uint8 RGB array [N, H, W, 3], got {dtype} {shape}; decode to rgb24")
    return frames


def _mp_image(frame: np.ndarray) -> mp.Image:
    # mp.Image copies from the raw buffer, so it must be contiguous (a crop is not).
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))


# ---------------------------------------------------------------- streams


def _base_options(key: str, model_dir: Path | str | None) -> BaseOptions:
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


def _create(factory: Any, options: Any, key: str) -> Any:
    try:
        with _native_warnings_silenced():
            return factory.create_from_options(options)
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(
            f"MediaPipe could not load model {key} from {options.base_options.model_asset_path} ({exc})",
            "check that mediapipe is installed intact, or delete the file and run `semiofed models fetch`",
        ) from exc


class _VideoStream:
    """One MediaPipe landmarker in VIDEO mode: frames in, that stream's schema arrays out."""

    name = ""

    def __init__(self, landmarker: Any) -> None:
        self._landmarker = landmarker
        self._last_ms: int | None = None

    def process(self, frames: np.ndarray, timestamps_ms: np.ndarray) -> Arrays:
        """Detect on frames [N, H, W, 3] uint8 RGB at strictly increasing timestamps (ms)."""
        frames = _check_frames(frames)
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
            self._fill(out, i, self._landmarker.detect_for_video(_mp_image(frame), t))
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

    def __enter__(self) -> _VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PoseStream(_VideoStream):
    """MediaPipe Pose Landmarker (full): POSE [N, 33, 4] (x, y, z, visibility) and POSE_MASK [N].

    num_poses=1: MediaPipe then keeps its highest-scoring person detection
    (it has no "most prominent person" option) and tracks it across frames.
    """

    name = "pose"

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
            base_options=_base_options("pose_landmarker_full", model_dir),
            running_mode=vision.RunningMode.VIDEO,
            num_poses=1,
            min_pose_detection_confidence=min_detection_confidence,
            min_pose_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        super().__init__(_create(vision.PoseLandmarker, options, "pose_landmarker_full"))

    def _fill(self, out: Arrays, i: int, result: Any) -> None:
        if result.pose_landmarks:
            out[POSE][i] = _pose_array(result.pose_landmarks[0])
            out[POSE_MASK][i] = True


def _pose_array(landmarks: Sequence[Any]) -> np.ndarray:
    return np.array([(p.x, p.y, p.z, p.visibility or 0.0) for p in landmarks], dtype=np.float32)


class HandStream(_VideoStream):
    """MediaPipe Hand Landmarker: HANDS [N, 2, 21, 3], HANDS_MASK [N, 2]; slot 0 = 'Left', 1 = 'Right'.

    The slot is MediaPipe's handedness label, which names the subject's hand
    in an unmirrored image. When both hands get the same label (two people,
    or a misclassified hand), the more confident one keeps the slot and the
    other is dropped rather than stored under the wrong side.
    """

    name = "hands"

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        options = vision.HandLandmarkerOptions(
            base_options=_base_options("hand_landmarker", model_dir),
            running_mode=vision.RunningMode.VIDEO,
            num_hands=2,
            min_hand_detection_confidence=min_detection_confidence,
            min_hand_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        super().__init__(_create(vision.HandLandmarker, options, "hand_landmarker"))

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


class FaceStream(_VideoStream):
    """MediaPipe Face Landmarker: FACE [N, F, 3] (the FACE_GROUPS subset), blendshapes [N, 52], HEAD_POSE [N, 3]."""

    name = "face"

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        options = vision.FaceLandmarkerOptions(
            base_options=_base_options("face_landmarker", model_dir),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=1,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        super().__init__(_create(vision.FaceLandmarker, options, "face_landmarker"))

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
    if stream == "pose":
        return {POSE: np.zeros((n, N_POSE, 4), np.float32), POSE_MASK: np.zeros(n, bool)}
    if stream == "hands":
        return {HANDS: np.zeros((n, 2, N_HAND, 3), np.float32), HANDS_MASK: np.zeros((n, 2), bool)}
    if stream == "face":
        return {
            FACE: np.zeros((n, N_FACE, 3), np.float32),
            FACE_MASK: np.zeros(n, bool),
            FACE_BLENDSHAPES: np.zeros((n, N_BLENDSHAPES), np.float32),
            HEAD_POSE: np.zeros((n, 3), np.float32),
        }
    raise ValueError(f"unknown stream '{stream}'; use one of {', '.join(STREAMS)}")


def detection_rate(arrays: Arrays) -> dict[str, float]:
    """Fraction of frames where each stream found the person (hands: at least one hand)."""
    rates: dict[str, float] = {}
    for stream, key in (("pose", POSE_MASK), ("hands", HANDS_MASK), ("face", FACE_MASK)):
        if key in arrays:
            mask = np.asarray(arrays[key])
            present = mask.any(axis=1) if mask.ndim == 2 else mask
            rates[stream] = float(present.mean()) if present.size else 0.0
    return rates


# ---------------------------------------------------------------- rotation


def uprightness(pose_xy: np.ndarray, width: int, height: int) -> float:
    """Cosine between the shoulders-to-nose direction and image-up (1 upright, 0 sideways, -1 upside down)."""
    nose = pose_xy[_NOSE, :2] * (width, height)
    shoulders = (pose_xy[_LEFT_SHOULDER, :2] + pose_xy[_RIGHT_SHOULDER, :2]) / 2 * (width, height)
    dx, dy = nose - shoulders
    norm = math.hypot(dx, dy)
    return float(-dy / norm) if norm > 0 else 0.0


@dataclass(frozen=True)
class ProbeResult:
    """What the pose probe saw in one frame."""

    found: bool
    visibility: float = 0.0
    upright: float = 0.0


class PoseProbe:
    """An IMAGE-mode pose landmarker for trying rotations without disturbing the VIDEO-mode streams."""

    def __init__(self, model_dir: Path | str | None = None) -> None:
        options = vision.PoseLandmarkerOptions(
            base_options=_base_options("pose_landmarker_full", model_dir),
            running_mode=vision.RunningMode.IMAGE,
            num_poses=1,
        )
        self._landmarker = _create(vision.PoseLandmarker, options, "pose_landmarker_full")

    def probe(self, frame: np.ndarray) -> ProbeResult:
        """Look for one person in a single RGB frame [H, W, 3]."""
        result = self._landmarker.detect(_mp_image(frame))
        if not result.pose_landmarks:
            return ProbeResult(found=False)
        pose = _pose_array(result.pose_landmarks[0])
        return ProbeResult(True, float(pose[:, 3].mean()), uprightness(pose, frame.shape[1], frame.shape[0]))

    def close(self) -> None:
        """Release the MediaPipe landmarker."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> PoseProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _score(frames: np.ndarray, degrees: int, pose_probe: PoseProbe) -> tuple[int, int, float]:
    """(upright detections, detections, mean visibility) over the sample frames at one rotation."""
    results = [pose_probe.probe(rotate(frame, degrees)) for frame in frames]
    found = [r for r in results if r.found]
    upright = sum(r.upright >= UPRIGHT_COS for r in found)
    return upright, len(found), float(np.mean([r.visibility for r in found])) if found else 0.0


def choose_rotation(frames: np.ndarray, current: int, pose_probe: PoseProbe, *, samples: int = 3) -> int:
    """Pick the clockwise rotation (0/90/180/270) of a window that shows the person upright.

    frames are the window before rotation (after any ROI crop). If a person is
    found upright on some of `samples` evenly spaced frames at `current`,
    `current` is kept. Otherwise every rotation is tried on those frames and
    the best kept: most upright detections, then most detections, then
    higher mean visibility; ties keep `current`, and so does finding nobody.
    The best replaces `current` only if it shows the person upright in most
    sample frames, so that one stray detection cannot turn the video.
    Uprightness, not mere detection, decides because MediaPipe's pose detector
    predicts the body's rotation itself and finds people lying sideways; it is
    the face landmarker that needs an upright face.
    """
    frames = _check_frames(frames)
    if len(frames) == 0:
        return current
    picks = frames[np.unique(np.linspace(0, len(frames) - 1, max(1, samples)).round().astype(int))]
    scores = {current: _score(picks, current, pose_probe)}
    if scores[current][0] > 0:
        return current
    for degrees in ROTATIONS:
        if degrees != current:
            scores[degrees] = _score(picks, degrees, pose_probe)
    best = max(scores, key=scores.__getitem__)  # the first maximum: the current rotation wins ties
    return best if scores[best][0] * 2 > len(picks) else current


# ---------------------------------------------------------------- orchestration


class RotationTracker:
    """The rotation of one video's windows, searched with the pose probe only when needed.

    No search while the last window's pose showed an upright person. After a
    search that kept the rotation, the next `RETRY_WINDOWS` windows skip it:
    a full search costs 4 x `samples` probe detections, and cameras seldom
    turn (a patient lying in bed is never upright, so without the pause
    every window would pay for a search).
    """

    RETRY_WINDOWS = 4

    def __init__(self, probe: PoseProbe | None, rotation: int = 0, samples: int = 3) -> None:
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation {rotation} is not one of {ROTATIONS}")
        self.probe = probe
        self.rotation = rotation
        self.samples = samples
        self._upright_before = False
        self._cooldown = 0

    def choose(self, frames: np.ndarray) -> int:
        """The rotation for this window (frames before rotation, after any ROI crop)."""
        if self.probe is None or self._upright_before:
            return self.rotation  # the last window's pose already showed an upright person at this rotation
        if self._cooldown > 0:
            self._cooldown -= 1
            return self.rotation
        chosen = choose_rotation(frames, self.rotation, self.probe, samples=self.samples)
        if chosen == self.rotation:
            self._cooldown = self.RETRY_WINDOWS
        else:
            logger.info("rotation changed from %d to %d degrees clockwise", self.rotation, chosen)
            self.rotation = chosen
        return self.rotation

    def observe(self, arrays: Arrays, width: int, height: int) -> None:
        """Remember whether this window's pose (at the chosen rotation) showed an upright person."""
        self._upright_before = _mostly_upright(arrays, width, height)


class KeypointExtractor:
    """ROI crop, rotation choice and the three streams for consecutive windows of one video."""

    def __init__(
        self,
        model_dir: Path | str | None = None,
        streams: Sequence[str] = STREAMS,
        window: int = 15,
        *,
        roi: Sequence[float] | None = None,
        rotation: int = 0,
        auto_rotate: bool = True,
        samples: int = 3,
    ) -> None:
        unknown = [s for s in streams if s not in STREAMS]
        if unknown:
            raise ValueError(f"unknown stream(s) {', '.join(unknown)}; use any of {', '.join(STREAMS)}")
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        self.window = window
        self.roi = tuple(roi) if roi is not None else None
        self.tracker = RotationTracker(None, rotation, samples)
        classes = {"pose": PoseStream, "hands": HandStream, "face": FaceStream}
        self.streams: dict[str, _VideoStream] = {}
        try:
            for name in STREAMS:
                if name in streams:
                    self.streams[name] = classes[name](model_dir)
            self.tracker.probe = PoseProbe(model_dir) if auto_rotate else None
        except Exception:
            self.close()
            raise

    @property
    def rotation(self) -> int:
        """The rotation (degrees clockwise) applied to the latest window."""
        return self.tracker.rotation

    def process_window(self, frames: np.ndarray, timestamps_ms: np.ndarray) -> tuple[np.ndarray, Arrays]:
        """Crop, choose the rotation, rotate and run the streams; returns the processed frames and the arrays.

        The arrays hold every schema key of the three streams (zeros and False
        for a disabled stream) and ROTATION [N] int16.
        """
        frames = crop_roi(_check_frames(frames), self.roi)
        rotated = rotate(frames, self.tracker.choose(frames))
        arrays: Arrays = {}
        for name in STREAMS:
            stream = self.streams.get(name)
            arrays.update(stream.process(rotated, timestamps_ms) if stream else empty_arrays(name, len(rotated)))
        arrays[ROTATION] = np.full(len(rotated), self.rotation, np.int16)
        if "pose" in self.streams:
            self.tracker.observe(arrays, rotated.shape[2], rotated.shape[1])
        return rotated, arrays

    def run(self, frames_iter: Iterable[tuple[np.ndarray, int]]) -> Arrays:
        """Process (frame [H, W, 3], timestamp_ms) pairs window by window; the arrays for all frames."""
        parts = [arrays for _, arrays in self._windows(frames_iter)]
        if not parts:
            empty = {k: v for s in STREAMS for k, v in empty_arrays(s, 0).items()}
            return {**empty, ROTATION: np.zeros(0, np.int16)}
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _windows(self, frames_iter: Iterable[tuple[np.ndarray, int]]) -> Iterator[tuple[np.ndarray, Arrays]]:
        batch: list[np.ndarray] = []
        stamps: list[int] = []
        for frame, t in frames_iter:
            batch.append(frame)
            stamps.append(int(t))
            if len(batch) == self.window:
                yield self.process_window(np.stack(batch), np.asarray(stamps))
                batch, stamps = [], []
        if batch:
            yield self.process_window(np.stack(batch), np.asarray(stamps))

    def close(self) -> None:
        """Release every landmarker."""
        for stream in self.streams.values():
            stream.close()
        if self.tracker.probe is not None:
            self.tracker.probe.close()

    def __enter__(self) -> KeypointExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mostly_upright(arrays: Arrays, width: int, height: int) -> bool:
    """Whether an upright person was found in at least half the window's frames."""
    mask = arrays[POSE_MASK]
    if not len(mask):
        return False
    upright = sum(uprightness(pose, width, height) >= UPRIGHT_COS for pose in arrays[POSE][mask])
    return upright * 2 >= len(mask)
