"""ROI crop and rotation of frames, and the choice of the rotation that shows the person upright.

The rotation is chosen per window of frames with an IMAGE-mode pose probe
(`PoseProbe`), so that the VIDEO-mode streams of `landmarks` keep their
tracking state; `RotationTracker` decides when a search is worth its cost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mediapipe.tasks.python import vision

from semiofed.client.deid.landmarks import (
    Arrays,
    PoseStream,
    base_options,
    check_frames,
    create_landmarker,
    mp_image,
    pose_array,
)
from semiofed.common.records.schema import POSE, POSE_MASK

logger = logging.getLogger(__name__)

ROTATIONS = (0, 90, 180, 270)

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


def turn_fractions(x: np.ndarray | float, y: np.ndarray | float, degrees: int) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Where a point at fractions (x, y) of a frame lies in the frame `rotate`d by `degrees`: the one mapping that
    boxes and landmarks share (its inverse is the turn by -degrees)."""
    degrees %= 360
    if degrees == 0:
        return x, y
    if degrees == 90:
        return 1.0 - y, x
    if degrees == 180:
        return 1.0 - x, 1.0 - y
    if degrees == 270:
        return y, 1.0 - x
    raise ValueError(f"rotation {degrees} is not a multiple of 90 degrees; use one of {ROTATIONS}")


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
    """An IMAGE-mode pose landmarker (PoseStream's model) for trying rotations without disturbing the VIDEO streams."""

    def __init__(self, model_dir: Path | str | None = None, *, min_confidence: float = 0.5) -> None:
        options = vision.PoseLandmarkerOptions(
            base_options=base_options(PoseStream.model_key, model_dir),
            running_mode=vision.RunningMode.IMAGE,
            num_poses=1,
            min_pose_detection_confidence=min_confidence,
            min_pose_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self._landmarker = create_landmarker(vision.PoseLandmarker, options, PoseStream.model_key)

    def pose(self, frame: np.ndarray) -> np.ndarray | None:
        """The pose [33, 4] of the one person found in a single RGB frame [H, W, 3], or None."""
        result = self._landmarker.detect(mp_image(frame))
        return pose_array(result.pose_landmarks[0]) if result.pose_landmarks else None

    def probe(self, frame: np.ndarray) -> ProbeResult:
        """Look for one person in a single RGB frame [H, W, 3]."""
        pose = self.pose(frame)
        if pose is None:
            return ProbeResult(found=False)
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
    frames = check_frames(frames)
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


# ---------------------------------------------------------------- tracking


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
        self._upright_before = mostly_upright(arrays, width, height)


def mostly_upright(arrays: Arrays, width: int, height: int) -> bool:
    """Whether an upright person was found in at least half the window's frames."""
    mask = arrays[POSE_MASK]
    if not len(mask):
        return False
    upright = sum(uprightness(pose, width, height) >= UPRIGHT_COS for pose in arrays[POSE][mask])
    return upright * 2 >= len(mask)
