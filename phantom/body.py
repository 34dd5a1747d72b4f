"""The articulated phantom body: joint tree, per-patient anthropometry and vectorised forward kinematics.

Body frame at rest: x is the subject's left, y is up (towards the head), z is
anterior (the way the face looks). Every joint frame is aligned with the body
frame at rest, so rest offsets are written in body coordinates.

The first 33 joints are, in order, the 33 MediaPipe pose landmarks (subject's
left = MediaPipe "left"), so `joints_2d[:, :33]` compares directly with
MediaPipe pose output. The remaining joints are the trunk, jaw, and the 21
MediaPipe hand landmarks of each hand (see `HAND_LANDMARK_JOINTS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# MediaPipe pose landmark names, in MediaPipe's index order (0..32).
POSE_LANDMARKS: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
_HAND_NAMES = (
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip", "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip", "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)
# Pose landmarks 17/19/21 are BlazePose's pinky knuckle, index knuckle and thumb knuckle #2.
_POSE_HAND_ALIASES = {"wrist": "wrist", "pinky_mcp": "pinky", "index_mcp": "index", "thumb_ip": "thumb"}
_TRUNK = ("pelvis", "spine", "chest", "neck", "head", "jaw", "chin")


def _hand_joint_names(side: str) -> list[str]:
    names = []
    for part in _HAND_NAMES:
        alias = _POSE_HAND_ALIASES.get(part)
        names.append(f"{side}_{alias}" if alias else f"{side}_hand_{part}")
    return names


JOINTS: tuple[str, ...] = POSE_LANDMARKS + _TRUNK + tuple(
    n for side in ("left", "right") for n in _hand_joint_names(side) if n not in POSE_LANDMARKS
)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINTS)}
NUM_JOINTS = len(JOINTS)
# MediaPipe pose landmark i is joint POSE_LANDMARK_JOINTS[i] (the identity, by construction).
POSE_LANDMARK_JOINTS: tuple[int, ...] = tuple(range(len(POSE_LANDMARKS)))
# MediaPipe hand landmark k of the subject's left/right hand is joint HAND_LANDMARK_JOINTS[side][k].
HAND_LANDMARK_JOINTS: dict[str, tuple[int, ...]] = {
    side: tuple(JOINT_INDEX[n] for n in _hand_joint_names(side)) for side in ("left", "right")
}


@dataclass(frozen=True)
class Anthropometry:
    """Per-patient body proportions and colours (lengths in metres, colours BGR 0..255)."""

    height_m: float
    shoulder_scale: float  # shoulder width relative to the population mean
    hip_scale: float
    limb_scale: float  # limb length relative to trunk
    girth: float  # segment radius factor (slim < 1 < broad)
    skin_bgr: tuple[int, int, int]
    hair_bgr: tuple[int, int, int]
    shirt_bgr: tuple[int, int, int]
    trousers_bgr: tuple[int, int, int]

    def to_json(self) -> dict:
        """Return a JSON-serialisable dict."""
        return asdict(self)


SKIN_TONES = ((160, 190, 235), (130, 170, 220), (100, 140, 195), (70, 105, 160), (50, 75, 115), (175, 200, 240))
HAIR_COLOURS = ((30, 30, 35), (25, 45, 75), (60, 90, 130), (150, 150, 155), (20, 20, 20))
SHIRT_COLOURS = ((200, 150, 90), (170, 200, 120), (220, 220, 220), (90, 90, 170), (190, 160, 200), (120, 60, 40))
TROUSER_COLOURS = ((110, 70, 40), (70, 70, 70), (160, 140, 120), (60, 60, 110), (200, 170, 140))


def sample_anthropometry(rng: np.random.Generator) -> Anthropometry:
    """Draw one patient's proportions and colours."""
    def pick(options: tuple) -> tuple[int, int, int]:
        return tuple(int(v) for v in options[int(rng.integers(len(options)))])

    return Anthropometry(
        height_m=float(np.clip(rng.normal(1.70, 0.09), 1.50, 1.95)),
        shoulder_scale=float(rng.uniform(0.92, 1.10)),
        hip_scale=float(rng.uniform(0.92, 1.12)),
        limb_scale=float(rng.uniform(0.95, 1.05)),
        girth=float(rng.uniform(0.9, 1.25)),
        skin_bgr=pick(SKIN_TONES),
        hair_bgr=pick(HAIR_COLOURS),
        shirt_bgr=pick(SHIRT_COLOURS),
        trousers_bgr=pick(TROUSER_COLOURS),
    )


def _rest_offsets(a: Anthropometry) -> tuple[np.ndarray, np.ndarray]:
    """Return (parent index [J], rest offset from parent [J,3]) for this anthropometry."""
    h = a.height_m
    L = a.limb_scale
    parent = np.full(NUM_JOINTS, -1, dtype=np.int64)
    offset = np.zeros((NUM_JOINTS, 3))

    def put(name: str, parent_name: str | None, xyz: tuple[float, float, float]) -> None:
        j = JOINT_INDEX[name]
        parent[j] = JOINT_INDEX[parent_name] if parent_name else -1
        offset[j] = np.asarray(xyz) * h

    put("pelvis", None, (0, 0, 0))
    put("spine", "pelvis", (0, 0.11, -0.005))
    put("chest", "spine", (0, 0.12, 0.0))
    put("neck", "chest", (0, 0.075, -0.005))
    put("head", "neck", (0, 0.075, 0.012))
    put("jaw", "head", (0, -0.012, 0.010))
    put("chin", "jaw", (0, -0.046, 0.036))
    put("nose", "head", (0, -0.004, 0.062))
    for side, s in (("left", 1.0), ("right", -1.0)):
        put(f"{side}_eye_inner", "head", (s * 0.010, 0.014, 0.054))
        put(f"{side}_eye", "head", (s * 0.021, 0.015, 0.050))
        put(f"{side}_eye_outer", "head", (s * 0.031, 0.014, 0.044))
        put(f"{side}_ear", "head", (s * 0.046, 0.004, -0.004))
        put(f"mouth_{side}", "head", (s * 0.015, -0.030, 0.050))
        put(f"{side}_shoulder", "chest", (s * 0.118 * a.shoulder_scale, 0.050, -0.01))
        put(f"{side}_elbow", f"{side}_shoulder", (0, -0.186 * L, 0))
        put(f"{side}_wrist", f"{side}_elbow", (0, -0.146 * L, 0))
        put(f"{side}_hip", "pelvis", (s * 0.085 * a.hip_scale, -0.02, 0))
        put(f"{side}_knee", f"{side}_hip", (0, -0.245 * L, 0))
        put(f"{side}_ankle", f"{side}_knee", (0, -0.246 * L, 0))
        put(f"{side}_heel", f"{side}_ankle", (0, -0.035, -0.028))
        put(f"{side}_foot_index", f"{side}_ankle", (0, -0.040, 0.115))
        # Hand hanging down, palm facing the thigh (medially), thumb anterior.
        w = f"{side}_wrist"
        m = -s  # medial direction along x
        put(f"{side}_hand_thumb_cmc", w, (m * 0.008, -0.010, 0.014))
        put(f"{side}_hand_thumb_mcp", f"{side}_hand_thumb_cmc", (m * 0.004, -0.018, 0.010))
        put(f"{side}_thumb", f"{side}_hand_thumb_mcp", (m * 0.002, -0.016, 0.004))
        put(f"{side}_hand_thumb_tip", f"{side}_thumb", (m * 0.002, -0.014, 0.002))
        for finger, z, length in (("index", 0.013, 0.050), ("middle", 0.004, 0.055), ("ring", -0.005, 0.051),
                                  ("pinky", -0.013, 0.040)):
            mcp = f"{side}_index" if finger == "index" else (f"{side}_pinky" if finger == "pinky" else f"{side}_hand_{finger}_mcp")
            put(mcp, w, (m * 0.004, -0.048, z))
            put(f"{side}_hand_{finger}_pip", mcp, (0, -0.45 * length, 0))
            put(f"{side}_hand_{finger}_dip", f"{side}_hand_{finger}_pip", (0, -0.30 * length, 0))
            put(f"{side}_hand_{finger}_tip", f"{side}_hand_{finger}_dip", (0, -0.25 * length, 0))
    return parent, offset


def _topological_order(parent: np.ndarray) -> np.ndarray:
    order: list[int] = []
    placed = np.zeros(len(parent), dtype=bool)
    while len(order) < len(parent):
        for j, p in enumerate(parent):
            if not placed[j] and (p < 0 or placed[p]):
                order.append(j)
                placed[j] = True
    return np.asarray(order)


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] for intrinsic yaw-pitch-roll R = Ry(y) @ Rx(x) @ Rz(z), angles [..., 3] = (x, y, z)."""
    cx, cy, cz = np.cos(angles[..., 0]), np.cos(angles[..., 1]), np.cos(angles[..., 2])
    sx, sy, sz = np.sin(angles[..., 0]), np.sin(angles[..., 1]), np.sin(angles[..., 2])
    r = np.empty(angles.shape[:-1] + (3, 3))
    r[..., 0, 0] = cy * cz + sy * sx * sz
    r[..., 0, 1] = -cy * sz + sy * sx * cz
    r[..., 0, 2] = sy * cx
    r[..., 1, 0] = cx * sz
    r[..., 1, 1] = cx * cz
    r[..., 1, 2] = -sx
    r[..., 2, 0] = -sy * cz + cy * sx * sz
    r[..., 2, 1] = sy * sz + cy * sx * cz
    r[..., 2, 2] = cy * cx
    return r


class Skeleton:
    """A patient's joint tree with forward kinematics over whole sequences at once."""

    def __init__(self, anthropometry: Anthropometry) -> None:
        self.anthropometry = anthropometry
        self.parent, self.offset = _rest_offsets(anthropometry)
        self.order = _topological_order(self.parent)

    def forward(self, angles: np.ndarray, root_pos: np.ndarray, root_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return world joint positions [T,J,3] and joint frames [T,J,3,3].

        `angles` [T,J,3] are local Euler angles (see `euler_to_matrix`), `root_pos`
        [T,3] places the pelvis and `root_rot` [T,3,3] orients the body frame in the world.
        """
        steps = angles.shape[0]
        local = euler_to_matrix(angles)
        rot = np.empty((steps, NUM_JOINTS, 3, 3))
        pos = np.empty((steps, NUM_JOINTS, 3))
        for j in self.order:
            p = self.parent[j]
            if p < 0:
                rot[:, j] = root_rot @ local[:, j]
                pos[:, j] = root_pos
            else:
                rot[:, j] = rot[:, p] @ local[:, j]
                pos[:, j] = pos[:, p] + rot[:, p] @ self.offset[j]
        return pos, rot
