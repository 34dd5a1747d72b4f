"""The patient's box for the STCNN: a square around every body landmark the pose saw in a window.

The spatiotemporal CNN takes square 224x224 input. A centre crop of the whole
frame keeps the middle of the room, and at a bed side or ceiling camera it
drops much of the patient (a centre crop keeps 56% of a 16:9 frame's width).
Instead each window's frames are cropped to a square around the patient: the
box of the landmarks the pose saw in the window (every frame, so the box holds
the whole movement), widened by a margin for hands and feet, never smaller
than a share of the frame, and padded with grey where it runs past the frame.
Within a video the square only grows: each window's square is the one that
holds both its own patient box and the square before it. The scale then stays
put while the patient stays put, so a change between two snippets' features
is movement and not a re-framing. Without a pose the square is kept, and
before any pose the whole frame (padded to a square) is used.

The box depends on the video's own pose only and never leaves the site: only
the STCNN features of the cropped frames are stored.
"""

from __future__ import annotations

import numpy as np

from semiofed.common.records.schema import POSE, POSE_MASK

MARGIN = 0.2  # of the landmarks' extent, each side: fingers, toes and the head beyond the landmarks
MIN_SIDE = 0.3  # of the frame's shorter side: a small or partial detection does not zoom onto a few pixels
MIN_VISIBILITY = 0.3  # MediaPipe's visibility below this is a guessed (occluded or off-frame) landmark
PAD_VALUE = 128  # mid-grey: 0 after the STCNN's scaling to [-1, 1]

Box = tuple[int, int, int]  # left, top, side in pixels (the square may run past the frame)


def patient_box(arrays: dict[str, np.ndarray], width: int, height: int) -> Box | None:
    """The square around the visible pose landmarks of a window's frames, or None when no pose was found."""
    pose = arrays[POSE][arrays[POSE_MASK]]
    if pose.size == 0:
        return None
    seen = pose[..., 3] >= MIN_VISIBILITY
    if not seen.any():
        return None
    xs = np.clip(pose[..., 0][seen], 0.0, 1.0) * width
    ys = np.clip(pose[..., 1][seen], 0.0, 1.0) * height
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * MARGIN)
    side = max(side, MIN_SIDE * min(width, height))
    side = int(round(side))
    return int(round((x0 + x1 - side) / 2.0)), int(round((y0 + y1 - side) / 2.0)), max(side, 1)


def whole_frame_box(width: int, height: int) -> Box:
    """The square that holds the whole frame, centred (the frame is padded to it)."""
    side = max(width, height)
    return (width - side) // 2, (height - side) // 2, side


def crop_square(frames: np.ndarray, box: Box) -> np.ndarray:
    """Frames [T, H, W, 3] cut to the square box [T, side, side, 3]; the part outside the frame is mid-grey."""
    left, top, side = box
    t, height, width = frames.shape[:3]
    out = np.full((t, side, side, frames.shape[3]), PAD_VALUE, dtype=frames.dtype)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, width), min(top + side, height)
    if x1 > x0 and y1 > y0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = frames[:, y0:y1, x0:x1]
    return out


def enclosing_box(a: Box, b: Box) -> Box:
    """The smallest square holding squares a and b (centred on their joint extent)."""
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[2], b[1] + b[2])
    side = max(x1 - x0, y1 - y0)
    return (x0 + x1 - side) // 2, (y0 + y1 - side) // 2, side


class PatientCropper:
    """One video's crops: a square that grows to hold the patient of every window so far (else the whole frame)."""

    def __init__(self) -> None:
        self.last: Box | None = None

    def __call__(self, frames: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Crop a window's upright frames [T, H, W, 3] around the patient its pose arrays (and earlier windows) saw."""
        height, width = frames.shape[1:3]
        seen = patient_box(arrays, width, height)
        if seen is not None:
            self.last = seen if self.last is None else enclosing_box(self.last, seen)
        return crop_square(frames, self.last or whole_frame_box(width, height))
