"""One phantom video's specification and its simulated ground truth (no pixels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiofed.phantom.body import Anthropometry, Skeleton, euler_to_matrix
from semiofed.phantom.scene import SceneSpec, resting_pose
from semiofed.phantom.semiology import PatientTraits, SeizurePlan, motion_program


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything that determines one video: patient, seizure plan, scene, frame rate and seed."""

    patient_id: str
    seizure_id: str
    anthropometry: Anthropometry
    traits: PatientTraits
    plan: SeizurePlan
    scene: SceneSpec
    fps: float
    seed: int

    @property
    def size(self) -> tuple[int, int]:
        """Frame (width, height) in pixels."""
        return self.scene.camera.width, self.scene.camera.height

    @property
    def num_frames(self) -> int:
        """Number of frames in the video."""
        return int(round(self.plan.video_s * self.fps))


@dataclass
class Episode:
    """The simulated motion of one video: world joints and frames, and their projection."""

    spec: EpisodeSpec
    joints_3d: np.ndarray  # [T,J,3] world metres
    frames_3d: np.ndarray  # [T,J,3,3] joint orientations (for rendering)
    joints_2d: np.ndarray  # [T,J,2] pixels
    depth: np.ndarray  # [T,J] metres along the camera axis


def simulate(spec: EpisodeSpec) -> Episode:
    """Run the seizure program and forward kinematics, then project with the scene camera."""
    rng = np.random.default_rng([spec.seed, 1])
    skeleton = Skeleton(spec.anthropometry)
    offsets, root_angles = motion_program(spec.plan, spec.traits, spec.fps, rng)
    rest, pelvis, body_rot = resting_pose(spec.scene, spec.anthropometry.height_m)
    angles = rest[None] + offsets[: spec.num_frames]
    root_rot = body_rot[None] @ euler_to_matrix(root_angles[: spec.num_frames])
    root_pos = np.broadcast_to(pelvis, (len(angles), 3))
    joints_3d, frames_3d = skeleton.forward(angles, root_pos, root_rot)
    joints_2d, depth = spec.scene.camera.project(joints_3d)
    return Episode(spec, joints_3d, frames_3d, joints_2d, depth)
