"""Pinhole camera: look-at placement with roll, and projection of world points to pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in OpenCV convention (x right, y down, z forward) with square pixels."""

    position: tuple[float, float, float]
    target: tuple[float, float, float]
    roll_deg: float
    hfov_deg: float
    width: int
    height: int

    @property
    def focal_px(self) -> float:
        """Focal length in pixels, from the horizontal field of view."""
        return 0.5 * self.width / np.tan(np.radians(self.hfov_deg) / 2)

    @property
    def rotation(self) -> np.ndarray:
        """World-to-camera rotation [3,3] (rows: right, down, forward)."""
        eye, target = np.asarray(self.position, float), np.asarray(self.target, float)
        forward = target - eye
        forward /= np.linalg.norm(forward)
        # Looking (nearly) straight down, "up" is ambiguous: use the world +X (the bed's head end).
        up = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.95 else np.array([1.0, 0.0, 0.0])
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        roll = np.radians(self.roll_deg)
        right, down = (np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down)
        return np.stack([right, down, forward])

    @property
    def intrinsics(self) -> np.ndarray:
        """The 3x3 intrinsic matrix K."""
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2], [0.0, f, self.height / 2], [0.0, 0.0, 1.0]])

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """Transform world points [...,3] to camera coordinates [...,3]."""
        return (np.asarray(points) - np.asarray(self.position)) @ self.rotation.T

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points [...,3]; return pixel coordinates [...,2] and depth [...] in metres."""
        cam = self.to_camera(points)
        depth = np.maximum(cam[..., 2], 1e-3)
        f = self.focal_px
        uv = np.stack([f * cam[..., 0] / depth + self.width / 2, f * cam[..., 1] / depth + self.height / 2], axis=-1)
        return uv, depth

    def to_json(self) -> dict:
        """Return the camera as JSON: placement, intrinsics K and extrinsics R, t (x_cam = R x_world + t)."""
        rot = self.rotation
        return {
            "position_m": list(self.position),
            "target_m": list(self.target),
            "roll_deg": self.roll_deg,
            "hfov_deg": self.hfov_deg,
            "width": self.width,
            "height": self.height,
            "K": self.intrinsics.round(6).tolist(),
            "R": rot.round(6).tolist(),
            "t": (-rot @ np.asarray(self.position)).round(6).tolist(),
        }
