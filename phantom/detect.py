"""MediaPipe pose on phantom frames: detection rate and 2D keypoint error against the rendered ground truth."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from semiofed.common.models.registry import verified_path
from semiofed.phantom.body import POSE_LANDMARK_JOINTS

log = logging.getLogger(__name__)

# Landmarks used for the keypoint error: nose, shoulders, elbows, wrists, hips, knees, ankles.
CORE_LANDMARKS = (0, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


@dataclass(frozen=True)
class PoseResult:
    """MediaPipe pose output for a sequence: landmarks in pixels (NaN where no person was found)."""

    landmarks_px: np.ndarray  # [T,33,2]
    detected: np.ndarray  # [T] bool

    @property
    def detection_rate(self) -> float:
        """Fraction of frames with a detected person."""
        return float(self.detected.mean()) if len(self.detected) else 0.0


def run_pose(frames: Iterable[np.ndarray], fps: float, model_dir: Path | str | None = None,
             video_mode: bool = True) -> PoseResult:
    """Run MediaPipe PoseLandmarker (full) on BGR frames, in VIDEO (tracking) or IMAGE mode."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import PoseLandmarker, PoseLandmarkerOptions, RunningMode

    options = PoseLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(verified_path("pose_landmarker_full", model_dir))),
        running_mode=RunningMode.VIDEO if video_mode else RunningMode.IMAGE,
        num_poses=1,
    )
    points, found = [], []
    with PoseLandmarker.create_from_options(options) as landmarker:
        for i, bgr in enumerate(frames):
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
            h, w = rgb.shape[:2]
            if video_mode:
                result = landmarker.detect_for_video(image, int(round(i * 1000 / fps)))
            else:
                result = landmarker.detect(image)
            if result.pose_landmarks:
                lm = result.pose_landmarks[0]
                points.append(np.array([[p.x * w, p.y * h] for p in lm]))
                found.append(True)
            else:
                points.append(np.full((33, 2), np.nan))
                found.append(False)
    return PoseResult(np.asarray(points).reshape(-1, 33, 2), np.asarray(found, dtype=bool))


def body_size_px(joints_2d: np.ndarray) -> np.ndarray:
    """Per-frame body size: the diagonal of the bounding box of the 33 pose joints [T]."""
    pose = joints_2d[:, list(POSE_LANDMARK_JOINTS)]
    return np.linalg.norm(pose.max(axis=1) - pose.min(axis=1), axis=1)


def keypoint_error(result: PoseResult, joints_2d: np.ndarray) -> dict[str, float]:
    """Normalised 2D error of MediaPipe against ground truth on detected frames (core landmarks).

    Returns the mean and median of the per-frame mean error divided by body size,
    PCK@0.1 (share of landmarks within 10% of body size), and the same mean with
    left/right swapped (a check that the sides agree).
    """
    found = result.detected
    if not found.any():
        return {"nme": float("nan"), "nme_median": float("nan"), "pck10": float("nan"), "nme_swapped": float("nan")}
    core = list(CORE_LANDMARKS)
    swapped = [0, 12, 11, 14, 13, 16, 15, 24, 23, 26, 25, 28, 27]
    truth = joints_2d[found][:, [POSE_LANDMARK_JOINTS[k] for k in core]]
    size = body_size_px(joints_2d[found])[:, None]
    err = np.linalg.norm(result.landmarks_px[found][:, core] - truth, axis=2) / size
    err_sw = np.linalg.norm(result.landmarks_px[found][:, swapped] - truth, axis=2) / size
    per_frame = err.mean(axis=1)
    return {"nme": float(per_frame.mean()), "nme_median": float(np.median(per_frame)),
            "pck10": float((err < 0.1).mean()), "nme_swapped": float(err_sw.mean())}
