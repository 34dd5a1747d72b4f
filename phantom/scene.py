"""Scenes: where the patient lies or sits, where the camera is, and how the footage is degraded.

World frame: y up, floor at y = 0. The bed runs along x with its head end at
+x and its mattress top at y = BED_TOP; the chair faces +z from the origin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from semiofed.phantom.body import JOINT_INDEX, NUM_JOINTS
from semiofed.phantom.camera import Camera

SCENES = ("bed_side", "ceiling", "bed_sitting", "chair")
CLOTHING_PATTERNS = ("plain", "stripes")
POSTURE = {"bed_side": "supine", "ceiling": "supine", "bed_sitting": "sitting_bed", "chair": "chair",
           # the hard ward scenes of phantom/ward.py (never drawn for a cohort): a ceiling-corner camera, bed rails
           "ward_supine": "supine", "ward_side": "side_lying"}
BED_TOP = 0.55
BED_LENGTH, BED_WIDTH = 2.0, 0.95


@dataclass(frozen=True)
class SceneSpec:
    """Everything about a video except the patient and the seizure."""

    kind: str
    camera: Camera
    ir_night: bool  # greyscale infrared-like footage
    noise_sigma: float  # sensor noise, grey levels
    crf: int  # H.264 constant rate factor (higher = more compression)
    light_gain: float  # overall brightness
    light_change_s: float | None  # when the room light dims or brightens (None: constant)
    light_change_gain: float
    blanket: bool  # a blanket over the legs
    nurse_s: float | None  # when a nurse crosses in front of the camera (None: never)
    wall_bgr: tuple[int, int, int]
    bedding_bgr: tuple[int, int, int]
    recline_deg: float  # trunk recline for sitting postures
    clothing_pattern: str = "plain"  # the patient's shirt and trousers: "plain" or "stripes" (striped pyjamas)

    @property
    def posture(self) -> str:
        """The resting posture this scene implies: supine, sitting_bed or chair."""
        return POSTURE[self.kind]

    def to_json(self) -> dict:
        """Return a JSON-serialisable dict."""
        out = asdict(self)
        out["camera"] = self.camera.to_json()
        out["posture"] = self.posture
        return out


@dataclass(frozen=True)
class SiteStyle:
    """A site's recording habits: which scenes, how dark, how compressed (the non-IID knobs)."""

    scene_weights: dict[str, float]
    ir_fraction: float
    noise_sigma: tuple[float, float]
    crf: tuple[int, int]
    camera_distance: float  # multiplies the default camera distance
    blanket_fraction: float
    nurse_fraction: float
    light_change_fraction: float


def sample_scene(kind: str, style: SiteStyle, size: tuple[int, int], video_s: float,
                 rng: np.random.Generator) -> SceneSpec:
    """Draw one scene of the given kind in a site's style."""
    if kind not in SCENES:
        raise ValueError(f"unknown scene {kind!r}; use one of {', '.join(SCENES)}")
    width, height = size
    d = style.camera_distance * rng.uniform(0.9, 1.15)
    if kind == "bed_side":
        side = 1.0 if rng.random() < 0.5 else -1.0
        position = (rng.uniform(-0.4, 0.4), rng.uniform(1.6, 2.3), side * 2.4 * d)
        target, roll, fov = (rng.uniform(-0.15, 0.15), 0.7, 0.0), rng.normal(0, 2), rng.uniform(60, 70)
    elif kind == "ceiling":
        position = (rng.uniform(-0.1, 0.3), BED_TOP + 1.9 * d, rng.uniform(-0.3, 0.3))
        target = (position[0] - 0.05, BED_TOP, position[2] * 0.8)
        roll = float(rng.choice([0.0, 90.0, 180.0, 270.0]) + rng.normal(0, 15))
        fov = rng.uniform(70, 80)
    elif kind == "bed_sitting":
        position = (-2.0 * d, rng.uniform(1.4, 1.8), rng.uniform(-0.7, 0.7))
        target, roll, fov = (0.0, 0.9, 0.0), rng.normal(0, 2), rng.uniform(50, 58)
    else:
        position = (rng.uniform(-0.9, 0.9), rng.uniform(1.1, 1.6), 2.5 * d)
        target, roll, fov = (0.0, 0.8, 0.1), rng.normal(0, 2), rng.uniform(55, 65)
    camera = Camera(tuple(round(float(v), 4) for v in position), tuple(round(float(v), 4) for v in target),
                    round(float(roll), 3), round(float(fov), 3), width, height)
    walls = ((200, 205, 210), (180, 200, 190), (215, 210, 200), (170, 180, 200), (190, 190, 190))
    bedding = ((235, 235, 235), (220, 210, 190), (230, 225, 210), (210, 220, 235))
    light_change = rng.random() < style.light_change_fraction
    nurse = rng.random() < style.nurse_fraction
    return SceneSpec(
        kind=kind,
        camera=camera,
        ir_night=bool(rng.random() < style.ir_fraction),
        noise_sigma=round(float(rng.uniform(*style.noise_sigma)), 3),
        crf=int(rng.integers(style.crf[0], style.crf[1] + 1)),
        light_gain=round(float(rng.uniform(0.8, 1.1)), 3),
        light_change_s=round(float(rng.uniform(0.2, 0.8) * video_s), 2) if light_change else None,
        light_change_gain=round(float(rng.choice([0.6, 1.3])), 3),
        blanket=bool(kind in ("bed_side", "ceiling", "bed_sitting") and rng.random() < style.blanket_fraction),
        nurse_s=round(float(rng.uniform(0.1, 0.9) * video_s), 2) if nurse else None,
        wall_bgr=walls[int(rng.integers(len(walls)))],
        bedding_bgr=bedding[int(rng.integers(len(bedding)))],
        recline_deg=round(float(rng.uniform(20, 40) if kind == "bed_sitting" else rng.uniform(0, 12)), 2),
    )


def _basis(y_axis: np.ndarray, z_axis: np.ndarray) -> np.ndarray:
    """Body-to-world rotation whose columns are the world images of the body x, y, z axes."""
    y = y_axis / np.linalg.norm(y_axis)
    z = z_axis / np.linalg.norm(z_axis)
    return np.stack([np.cross(y, z), y, z], axis=1)


def resting_pose(scene: SceneSpec, height_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (resting angles [J,3], pelvis position [3], body-to-world rotation [3,3]) for the scene."""
    angles = np.zeros((NUM_JOINTS, 3))

    def put(joint: str, axis: int, value: float) -> None:
        angles[JOINT_INDEX[joint], axis] += value

    for name, s in (("left", 1.0), ("right", -1.0)):
        put(f"{name}_shoulder", 2, s * 0.18)
        put(f"{name}_elbow", 0, -0.25)
        put(f"{name}_hip", 2, s * 0.06)
        put(f"{name}_knee", 0, 0.08)
        put(f"{name}_ankle", 0, -0.1)
    beta = np.radians(scene.recline_deg)
    if scene.posture == "side_lying":
        # curled on the left side, facing the bed's +z edge: hips and knees flexed, arms drawn in, head bowed
        rot = _basis(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]))
        pelvis = np.array([0.0 - 0.05 * (height_m - 1.7), BED_TOP + 0.17, 0.0])
        for name in ("left", "right"):
            put(f"{name}_hip", 0, -1.1)
            put(f"{name}_knee", 0, 1.3)
            put(f"{name}_shoulder", 0, -0.9)
            put(f"{name}_elbow", 0, -1.3)
        put("neck", 0, 0.35)
    elif scene.posture == "supine":
        rot = _basis(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
        pelvis = np.array([0.0 - 0.05 * (height_m - 1.7), BED_TOP + 0.11, 0.0])
        put("neck", 0, 0.25)  # head on the pillow
    elif scene.posture == "sitting_bed":
        rot = _basis(np.array([np.sin(beta), np.cos(beta), 0]), np.array([-np.cos(beta), np.sin(beta), 0]))
        pelvis = np.array([0.35, BED_TOP + 0.10, 0.0])
        for name in ("left", "right"):
            put(f"{name}_hip", 0, -(np.pi / 2 - beta))
            put(f"{name}_shoulder", 0, -0.3)
            put(f"{name}_elbow", 0, -0.7)
        put("neck", 0, 0.15 + 0.5 * beta)
    else:
        rot = _basis(np.array([0, np.cos(beta), -np.sin(beta)]), np.array([0, np.sin(beta), np.cos(beta)]))
        pelvis = np.array([0.0, 0.45 + 0.10, 0.0])
        for name in ("left", "right"):
            put(f"{name}_hip", 0, -(np.pi / 2 - beta))
            put(f"{name}_knee", 0, np.pi / 2 - beta - 0.08)
            put(f"{name}_ankle", 0, 0.1)
            put(f"{name}_shoulder", 0, -0.45)
            put(f"{name}_elbow", 0, -0.9)
        put("neck", 0, 0.5 * beta)
    return angles, pelvis, rot


def roi_fraction(scene: SceneSpec) -> tuple[float, float, float, float] | None:
    """The bed (or chair) as x0,y0,x1,y1 fractions of the frame, or None where it fills the frame."""
    if scene.posture == "chair":
        corners = np.array([[x, y, z] for x in (-0.45, 0.45) for y in (0.0, 1.6) for z in (-0.4, 0.7)])
    else:
        # the box must hold the whole patient: a person sitting up in bed reaches ~1 m above the mattress
        top = BED_TOP + (1.1 if scene.posture == "sitting_bed" else 0.5)
        corners = np.array([[x, y, z] for x in (-BED_LENGTH / 2, BED_LENGTH / 2) for y in (BED_TOP - 0.1, top)
                            for z in (-BED_WIDTH / 2, BED_WIDTH / 2)])
    uv, _ = scene.camera.project(corners)
    w, h = scene.camera.width, scene.camera.height
    x0, x1 = np.clip([uv[:, 0].min() / w, uv[:, 0].max() / w], 0, 1)
    y0, y1 = np.clip([uv[:, 1].min() / h, uv[:, 1].max() / h], 0, 1)
    if x1 - x0 > 0.98 and y1 - y0 > 0.98:
        return None
    return (round(float(x0), 3), round(float(y0), 3), round(float(x1), 3), round(float(y1), 3))
