"""Draw an episode's frames with OpenCV fill primitives: room, bed or chair, shaded body, face, degradations."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import cv2
import numpy as np

from semiofed.phantom.body import JOINT_INDEX as JI
from semiofed.phantom.body import Anthropometry
from semiofed.phantom.episode import Episode
from semiofed.phantom.scene import BED_LENGTH, BED_TOP, BED_WIDTH

SHIFT = 4  # sub-pixel precision of OpenCV drawing: coordinates are multiplied by 2**SHIFT
_ONE = 1 << SHIFT
LINE = cv2.LINE_AA
LIGHT = np.array([0.3, 0.9, 0.3]) / np.linalg.norm([0.3, 0.9, 0.3])  # room light direction (towards the light)
NURSE_CROSSING_S = 3.0
# striped clothing (SceneSpec.clothing_pattern): stripes along each sleeve and trouser leg at these offsets (in limb
# radii) and across the chest, each STRIPE_WIDTH of the spacing wide, in the cloth's colour at STRIPE_SHADE
STRIPE_OFFSETS = (-0.55, 0.0, 0.55)
TORSO_STRIPES = 7
STRIPE_WIDTH = 0.35
STRIPE_SHADE = 0.45


def _fix(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates to OpenCV fixed point."""
    return np.round(np.asarray(points) * _ONE).astype(np.int32)


def _shade(bgr: tuple[int, int, int], factor: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, c * factor)) for c in bgr)


def _ellipse_params(centre: np.ndarray, axes_2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outline ellipse of projected ellipsoid semi-axes [T,3,2]: centres, (a, b) [T,2] and angle (degrees)."""
    m = np.einsum("tki,tkj->tij", axes_2d, axes_2d)  # 2x2 shape matrix A A^T
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 1, 1]
    mean, diff = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b ** 2)
    major, minor = np.sqrt(mean + diff), np.sqrt(np.maximum(mean - diff, 0))
    angle = np.degrees(0.5 * np.arctan2(2 * b, a - c))
    return centre, np.stack([major, minor], axis=1), angle


def _infrared(body: Anthropometry) -> Anthropometry:
    """Colours as a near-infrared camera sees them: skin bright whatever its tone, cloth by its luminance."""
    def grey(bgr: tuple[int, int, int], lift: float) -> tuple[int, int, int]:
        y = int(min(255, 0.114 * bgr[0] + 0.587 * bgr[1] + 0.299 * bgr[2]) * 0.7 + lift)
        return (y, y, y)

    return replace(body, skin_bgr=grey(body.skin_bgr, 70), hair_bgr=grey(body.hair_bgr, 10),
                   shirt_bgr=grey(body.shirt_bgr, 0), trousers_bgr=grey(body.trousers_bgr, 0))


class Renderer:
    """Renders one episode frame by frame (deterministic for a given episode)."""

    def __init__(self, episode: Episode) -> None:
        self.ep = episode
        spec = episode.spec
        self.scene = spec.scene
        self.cam = spec.scene.camera
        self.size = spec.size
        self.fps = spec.fps
        self.rng = np.random.default_rng([spec.seed, 2])
        h = spec.anthropometry.height_m
        g = spec.anthropometry.girth
        self.h = h
        self.body = _infrared(spec.anthropometry) if self.scene.ir_night else spec.anthropometry
        self.striped = self.scene.clothing_pattern == "stripes"
        self.background = self._background()
        self._prepare_head(h)
        # (joint a, joint b, radius a, radius b, colour) in metres
        skin, shirt, trousers = self.body.skin_bgr, self.body.shirt_bgr, self.body.trousers_bgr
        self.capsules = [("neck", "head", 0.030 * h * g, 0.030 * h * g, skin)]
        for s in ("left", "right"):
            self.capsules += [
                (f"{s}_shoulder", f"{s}_elbow", 0.030 * h * g, 0.025 * h * g, shirt),
                (f"{s}_elbow", f"{s}_wrist", 0.021 * h * g, 0.016 * h * g, skin),
                (f"{s}_hip", f"{s}_knee", 0.044 * h * g, 0.032 * h * g, trousers),
                (f"{s}_knee", f"{s}_ankle", 0.030 * h * g, 0.021 * h * g, trousers),
                (f"{s}_heel", f"{s}_foot_index", 0.018 * h, 0.016 * h, skin),
            ]
        self.cap_idx = np.array([[JI[a], JI[b]] for a, b, *_ in self.capsules])
        self.cap_r = np.array([[ra, rb] for _, _, ra, rb, _ in self.capsules])
        # the sleeves and trouser legs (by the joints, not the colour: in infrared two colours may grey alike)
        self.cap_cloth = [a.endswith(("_shoulder", "_hip", "_knee")) for a, *_ in self.capsules]
        self._prepare_torso(h, g)
        noise = self.rng.normal(0, max(self.scene.noise_sigma, 1e-6), (6, self.size[1], self.size[0], 1))
        channels = 1 if self.scene.ir_night else 3
        noise = np.repeat(noise, channels, axis=3) if channels == 3 else noise
        self.noise_pos = [np.clip(n, 0, 255).astype(np.uint8).squeeze() for n in noise]
        self.noise_neg = [np.clip(-n, 0, 255).astype(np.uint8).squeeze() for n in noise]
        t = np.arange(len(episode.joints_3d)) / self.fps
        gain = np.full(len(t), self.scene.light_gain)
        if self.scene.light_change_s is not None:
            step = np.clip((t - self.scene.light_change_s) / 1.5, 0, 1)
            gain *= 1 + (self.scene.light_change_gain - 1) * step
        self.gain = gain
        self.noise_order = self.rng.integers(len(self.noise_pos), size=len(t))
        self.nurse_dir = 1.0 if self.rng.random() < 0.5 else -1.0
        self.nurse_bgr = ((150, 110, 40), (120, 140, 60), (170, 130, 120))[int(self.rng.integers(3))]

    # --- static scene -----------------------------------------------------------------------

    def _poly3d(self, img: np.ndarray, points: np.ndarray, colour: tuple) -> None:
        """Fill a planar 3D polygon, clipped against the camera's near plane."""
        cam = self.cam.to_camera(points)
        near = 0.05
        out = []
        for i in range(len(cam)):
            p, q = cam[i], cam[(i + 1) % len(cam)]
            if p[2] >= near:
                out.append(p)
            if (p[2] >= near) != (q[2] >= near):
                out.append(p + (q - p) * (near - p[2]) / (q[2] - p[2]))
        if len(out) < 3:
            return
        cam = np.asarray(out)
        f = self.cam.focal_px
        uv = np.stack([f * cam[:, 0] / cam[:, 2] + self.size[0] / 2, f * cam[:, 1] / cam[:, 2] + self.size[1] / 2], 1)
        uv = np.clip(uv, -4 * self.size[0], 5 * self.size[0])
        cv2.fillPoly(img, [_fix(uv)], colour, LINE, SHIFT)

    def _box(self, img: np.ndarray, lo: tuple, hi: tuple, colour: tuple) -> None:
        """Draw the camera-facing faces of an axis-aligned box, shaded by the room light."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        eye = np.asarray(self.cam.position)
        for axis in range(3):
            for sign, plane in ((-1.0, lo[axis]), (1.0, hi[axis])):
                if (eye[axis] - plane) * sign <= 0:
                    continue  # back face
                normal = np.zeros(3)
                normal[axis] = sign
                u, v = [a for a in range(3) if a != axis]
                corners = []
                for cu, cv_ in ((lo[u], lo[v]), (hi[u], lo[v]), (hi[u], hi[v]), (lo[u], hi[v])):
                    p = np.zeros(3)
                    p[axis], p[u], p[v] = plane, cu, cv_
                    corners.append(p)
                self._poly3d(img, np.asarray(corners), _shade(colour, 0.65 + 0.4 * max(0.0, float(normal @ LIGHT))))

    def _background(self) -> np.ndarray:
        w, h = self.size
        wall = np.asarray(self.scene.wall_bgr, float)
        ramp = np.linspace(1.05, 0.85, h)[:, None, None]
        img = np.broadcast_to(wall[None, None] * ramp, (h, w, 3)).astype(np.uint8).copy()
        self._poly3d(img, np.array([[-4, 0, -4], [4, 0, -4], [4, 0, 4], [-4, 0, 4]], float), (120, 135, 150))
        self._poly3d(img, np.array([[-4, 0, -1.5], [4, 0, -1.5], [4, 2.8, -1.5], [-4, 2.8, -1.5]], float),
                     tuple(0.9 * c for c in self.scene.wall_bgr))
        bedding = self.scene.bedding_bgr
        if self.scene.posture == "chair":
            self._box(img, (-0.28, 0.38, -0.25), (0.28, 0.45, 0.30), (60, 80, 110))
            self._box(img, (-0.28, 0.45, -0.33), (0.28, 1.15, -0.26), (55, 75, 105))
            for x in (-0.26, 0.22):
                for z in (-0.24, 0.26):
                    self._box(img, (x, 0.0, z), (x + 0.04, 0.38, z + 0.04), (40, 50, 60))
            return img
        half_l, half_w = BED_LENGTH / 2, BED_WIDTH / 2
        self._box(img, (-half_l, 0.08, -half_w), (half_l, BED_TOP - 0.12, half_w), (110, 110, 115))
        self._box(img, (-half_l, BED_TOP - 0.12, -half_w), (half_l, BED_TOP, half_w), bedding)
        self._box(img, (half_l, 0.08, -half_w), (half_l + 0.06, 1.1, half_w), (90, 95, 100))
        if self.scene.kind.startswith("ward"):  # bed rails along both sides
            for z in (-half_w - 0.03, half_w):
                self._box(img, (-0.6, BED_TOP + 0.28, z), (0.8, BED_TOP + 0.33, z + 0.03), (150, 150, 155))
                for x in (-0.6, 0.1, 0.77):
                    self._box(img, (x, BED_TOP, z), (x + 0.03, BED_TOP + 0.3, z + 0.03), (150, 150, 155))
        if self.scene.posture in ("supine", "side_lying"):
            self._box(img, (0.62, BED_TOP, -0.3), (0.98, BED_TOP + 0.1, 0.3), _shade(bedding, 1.03))
        else:
            beta = np.radians(self.scene.recline_deg)
            base = np.array([0.45 + 0.12 * np.cos(beta), BED_TOP - 0.02, 0.0])
            up = np.array([np.sin(beta), np.cos(beta), 0.0])
            pts = [base + d * up + np.array([0, 0, z]) for d, z in ((0, -half_w), (0, half_w), (0.95, half_w), (0.95, -half_w))]
            self._poly3d(img, np.asarray(pts), _shade(bedding, 0.92))
        return img

    # --- body geometry, vectorised over frames -----------------------------------------------

    def _prepare_head(self, h: float) -> None:
        ep = self.ep
        rot = ep.frames_3d[:, JI["head"]]  # [T,3,3] columns: head x, y, z axes
        centre = ep.joints_3d[:, JI["head"]] + rot[:, :, 1] * 0.012 * h
        radii = np.array([0.046, 0.066, 0.056]) * h
        f = self.cam.focal_px
        cam_rot = self.cam.rotation
        c_cam = self.cam.to_camera(centre)
        depth = np.maximum(c_cam[:, 2], 1e-3)
        axes_cam = np.einsum("ij,tjk->tki", cam_rot, rot) * radii[None, :, None]  # [T,3(axis),3]
        # Weak perspective per frame: scale by focal/depth (the head is small against its distance).
        axes_2d = axes_cam[:, :, :2] * (f / depth)[:, None, None]
        uv, _ = self.cam.project(centre)
        self.head_uv, self.head_axes, self.head_angle = _ellipse_params(uv, axes_2d)
        hair_c = centre - rot[:, :, 2] * 0.2 * radii[2] + rot[:, :, 1] * 0.18 * radii[1]
        self.hair_uv, _ = self.cam.project(hair_c)
        self.hair_axes = self.head_axes * 1.02
        view = np.asarray(self.cam.position)[None] - centre
        view /= np.linalg.norm(view, axis=1, keepdims=True)
        self.face_facing = np.einsum("tj,tj->t", rot[:, :, 2], view)  # >0: the face looks at the camera
        self.side_facing = np.einsum("tj,tj->t", rot[:, :, 0], view)  # >0: the left ear is towards the camera
        self.head_depth = depth
        self.head_px = f * radii[0] / depth
        chin = ep.joints_3d[:, JI["chin"]]
        self.chin_uv, _ = self.cam.project(chin + 0.015 * h * rot[:, :, 1])
        mouth = 0.5 * (ep.joints_3d[:, JI["mouth_left"]] + ep.joints_3d[:, JI["mouth_right"]])
        self.mouth_open = np.clip(np.linalg.norm(chin - mouth, axis=1) / (0.04 * h) - 1.0, 0, 1)

    def _prepare_torso(self, h: float, g: float) -> None:
        ep = self.ep
        j3 = ep.joints_3d
        pts = []
        chest_rot, pelvis_rot, spine_rot = (ep.frames_3d[:, JI[n]] for n in ("chest", "pelvis", "spine"))
        for s, sign in (("left", 1.0), ("right", -1.0)):
            sh, hip = j3[:, JI[f"{s}_shoulder"]], j3[:, JI[f"{s}_hip"]]
            for d in (-0.06, 0.06):
                pts.append(sh + chest_rot[:, :, 2] * d * h * g + chest_rot[:, :, 1] * 0.01 * h + chest_rot[:, :, 0] * sign * 0.01 * h)
                pts.append(hip + pelvis_rot[:, :, 2] * d * 1.2 * h * g + pelvis_rot[:, :, 0] * sign * 0.035 * h * g)
                pts.append(j3[:, JI["spine"]] + spine_rot[:, :, 0] * sign * 0.085 * h * g + spine_rot[:, :, 2] * d * h * g)
        pts3 = np.stack(pts, axis=1)  # [T,12,3]
        self.torso_uv, torso_depth = self.cam.project(pts3)
        self.torso_depth = torso_depth.mean(axis=1) + 0.08 * h  # the back of the torso is drawn before the limbs on it
        light_2d = self.cam.rotation @ LIGHT
        self.light_px = light_2d[:2] / (np.linalg.norm(light_2d[:2]) + 1e-6)

    # --- drawing -----------------------------------------------------------------------------

    def _capsule(self, img: np.ndarray, p: np.ndarray, q: np.ndarray, ra: float, rb: float, colour: tuple,
                 cloth: bool = False) -> None:
        d = q - p
        n = np.array([-d[1], d[0]]) / (np.hypot(d[0], d[1]) + 1e-6)
        dark = _shade(colour, 0.72)
        poly = np.array([p + n * ra, q + n * rb, q - n * rb, p - n * ra])
        cv2.fillConvexPoly(img, _fix(poly), dark, LINE, SHIFT)
        cv2.circle(img, tuple(_fix(p)), int(ra * _ONE), dark, -1, LINE, SHIFT)
        cv2.circle(img, tuple(_fix(q)), int(rb * _ONE), dark, -1, LINE, SHIFT)
        # A lighter band on the lit side gives the limb a rounded, shaded look.
        side = n if n @ self.light_px < 0 else -n
        off_p, off_q = p + side * 0.3 * ra, q + side * 0.3 * rb
        thick = max(1, int(round(0.9 * (ra + rb) / 2)))
        cv2.line(img, tuple(_fix(off_p)), tuple(_fix(off_q)), _shade(colour, 1.0), thick, LINE, SHIFT)
        if self.striped and cloth:
            self._stripes(img, [(p + n * k * ra, q + n * k * rb) for k in STRIPE_OFFSETS], (ra + rb) / 2, colour)

    def _stripes(self, img: np.ndarray, lines: list[tuple[np.ndarray, np.ndarray]], width_px: float,
                 colour: tuple) -> None:
        """Pyjama stripes: dark lines along the cloth (a pattern the pose model must see through)."""
        thick = max(1, int(round(STRIPE_WIDTH * width_px)))
        for a, b in lines:
            cv2.line(img, tuple(_fix(a)), tuple(_fix(b)), _shade(colour, STRIPE_SHADE), thick, LINE, SHIFT)

    def _torso(self, img: np.ndarray, i: int) -> None:
        hull = cv2.convexHull(self.torso_uv[i].astype(np.float32)).reshape(-1, 2)
        colour = self.body.shirt_bgr
        cv2.fillConvexPoly(img, _fix(hull), _shade(colour, 0.75), LINE, SHIFT)
        centre = hull.mean(axis=0)
        inner = centre + (hull - centre) * 0.72 - self.light_px * 0.12 * np.ptp(hull, axis=0).mean()
        cv2.fillConvexPoly(img, _fix(inner), _shade(colour, 0.98), LINE, SHIFT)
        if self.striped:  # from the shoulder line down to the hip line, across the chest
            uv = self.torso_uv[i]  # per side: shoulder, hip, spine at two depths (_prepare_torso)
            (l_sh, l_hip), (r_sh, r_hip) = ((uv[[o, o + 3]].mean(axis=0), uv[[o + 1, o + 4]].mean(axis=0)) for o in (0, 6))
            fractions = np.linspace(0.1, 0.9, TORSO_STRIPES)
            self._stripes(img, [(l_sh + t * (r_sh - l_sh), l_hip + t * (r_hip - l_hip)) for t in fractions],
                          float(np.hypot(*(r_sh - l_sh))) / TORSO_STRIPES, colour)

    def _hand(self, img: np.ndarray, i: int, side: str, scale: float) -> None:
        uv = self.ep.joints_2d[i]
        skin = self.body.skin_bgr
        names = [f"{side}_wrist", f"{side}_hand_thumb_cmc", f"{side}_index", f"{side}_hand_middle_mcp",
                 f"{side}_hand_ring_mcp", f"{side}_pinky"]
        palm = uv[[JI[n] for n in names]].astype(np.float32)
        hull = cv2.convexHull(palm).reshape(-1, 2)
        centre = hull.mean(axis=0)
        hull = centre + (hull - centre) * 1.15
        cv2.fillConvexPoly(img, _fix(hull), _shade(skin, 0.85), LINE, SHIFT)
        chains = [[f"{side}_hand_thumb_cmc", f"{side}_hand_thumb_mcp", f"{side}_thumb", f"{side}_hand_thumb_tip"]]
        for finger in ("index", "middle", "ring", "pinky"):
            base = f"{side}_{finger}" if finger in ("index", "pinky") else f"{side}_hand_{finger}_mcp"
            chains.append([base, f"{side}_hand_{finger}_pip", f"{side}_hand_{finger}_dip", f"{side}_hand_{finger}_tip"])
        lines = [_fix(uv[[JI[n] for n in chain]]) for chain in chains]
        cv2.polylines(img, lines, False, _shade(skin, 0.9), max(1, int(round(0.009 * self.h * scale))), LINE, SHIFT)

    def _head(self, img: np.ndarray, i: int) -> None:
        body = self.body
        skin, hair = body.skin_bgr, body.hair_bgr
        uv, axes, angle = self.head_uv[i], self.head_axes[i], float(self.head_angle[i])
        r = float(self.head_px[i])
        facing, side = float(self.face_facing[i]), float(self.side_facing[i])
        j2 = self.ep.joints_2d[i]
        for ear, sign in (("left_ear", 1.0), ("right_ear", -1.0)):
            if sign * side > -0.3:
                cv2.ellipse(img, tuple(_fix(j2[JI[ear]])), (int(0.28 * r * _ONE), int(0.4 * r * _ONE)), angle, 0, 360,
                            _shade(skin, 0.8), -1, LINE, SHIFT)

        def ellipse(centre: np.ndarray, ax: np.ndarray, colour: tuple) -> None:
            cv2.ellipse(img, tuple(_fix(centre)), (int(ax[0] * _ONE), int(max(ax[1], 0.5) * _ONE)), angle, 0, 360,
                        colour, -1, LINE, SHIFT)

        if facing > -0.2:
            ellipse(self.hair_uv[i], self.hair_axes[i], hair)
        ellipse(uv, axes, _shade(skin, 0.8))
        ellipse(uv - self.light_px * 0.2 * r, axes * 0.78, _shade(skin, 1.0))
        cv2.circle(img, tuple(_fix(self.chin_uv[i])), int(0.55 * r * _ONE), _shade(skin, 0.92), -1, LINE, SHIFT)
        if facing <= -0.2:
            ellipse(self.hair_uv[i], self.hair_axes[i] * 0.95, hair)
            return
        if facing < 0.05:
            return
        eye_r = max(0.22 * r, 0.8)
        for eye, inner, outer in (("left_eye", "left_eye_inner", "left_eye_outer"), ("right_eye", "right_eye_inner", "right_eye_outer")):
            sign = 1.0 if eye.startswith("left") else -1.0
            if sign * side < -0.55:
                continue  # the far eye is hidden behind the face
            p = j2[JI[eye]]
            cv2.circle(img, tuple(_fix(p)), int(eye_r * _ONE), (235, 235, 235), -1, LINE, SHIFT)
            cv2.circle(img, tuple(_fix(p)), int(0.6 * eye_r * _ONE), (40, 30, 25), -1, LINE, SHIFT)
            brow = np.array([j2[JI[inner]], j2[JI[outer]]]) + (j2[JI[eye]] - j2[JI["mouth_left"]]) * 0.25
            cv2.line(img, tuple(_fix(brow[0])), tuple(_fix(brow[1])), hair, max(1, int(0.25 * r)), LINE, SHIFT)
        nose = j2[JI["nose"]]
        cv2.circle(img, tuple(_fix(nose)), int(max(0.18 * r, 0.7) * _ONE), _shade(skin, 0.7), -1, LINE, SHIFT)
        ml, mr = j2[JI["mouth_left"]], j2[JI["mouth_right"]]
        mouth_c = 0.5 * (ml + mr) + (self.chin_uv[i] - 0.5 * (ml + mr)) * 0.25 * float(self.mouth_open[i])
        width = 0.5 * float(np.hypot(*(ml - mr)))
        opening = max(0.12 * r, 0.5) + 0.35 * r * float(self.mouth_open[i])
        cv2.ellipse(img, tuple(_fix(mouth_c)), (int(max(width, 0.6) * _ONE), int(opening * _ONE)),
                    float(np.degrees(np.arctan2(*(ml - mr)[::-1]))), 0, 360, (60, 50, 150), -1, LINE, SHIFT)

    def _blanket(self, img: np.ndarray, i: int) -> None:
        j3 = self.ep.joints_3d[i]
        names = ["left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_foot_index", "right_foot_index"]
        if self.scene.kind.startswith("ward"):  # a ward blanket reaches the chest
            names += ["left_shoulder", "right_shoulder"]
        pts = j3[[JI[n] for n in names]]
        centre = pts.mean(axis=0)
        up = np.array([0.0, 1.0, 0.0])
        lateral = np.array([0.0, 0.0, 1.0])
        cloud = np.concatenate([pts + up * 0.1 + lateral * 0.22, pts + up * 0.1 - lateral * 0.22, pts - up * 0.05 + lateral * 0.3,
                                pts - up * 0.05 - lateral * 0.3, [centre + up * 0.05]])
        uv, _ = self.cam.project(cloud)
        hull = cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2)
        cv2.fillConvexPoly(img, _fix(hull), (200, 170, 130), LINE, SHIFT)
        c = hull.mean(axis=0)
        cv2.fillConvexPoly(img, _fix(c + (hull - c) * 0.7 - self.light_px * 3), (215, 188, 150), LINE, SHIFT)

    def _nurse(self, img: np.ndarray, i: int) -> None:
        t0 = self.scene.nurse_s
        t = i / self.fps
        if t0 is None or not (t0 <= t <= t0 + NURSE_CROSSING_S):
            return
        w, h = self.size
        frac = (t - t0) / NURSE_CROSSING_S
        x = (-0.35 + 1.7 * frac) * w if self.nurse_dir > 0 else (1.35 - 1.7 * frac) * w
        cv2.ellipse(img, (int(x * _ONE), int(0.85 * h * _ONE)), (int(0.2 * w * _ONE), int(0.6 * h * _ONE)), 0, 0, 360,
                    self.nurse_bgr, -1, LINE, SHIFT)
        cv2.circle(img, (int(x * _ONE), int(0.12 * h * _ONE)), int(0.12 * w * _ONE), (110, 140, 190), -1, LINE, SHIFT)

    def frame(self, i: int) -> np.ndarray:
        """Render frame i as a BGR uint8 image."""
        img = self.background.copy()
        ep = self.ep
        f = self.cam.focal_px
        uv, depth = ep.joints_2d[i], ep.depth[i]
        parts: list[tuple[float, int, object]] = []
        ends = self.cap_idx
        cap_depth = depth[ends].mean(axis=1)
        radii_px = self.cap_r * f / depth[ends]
        for k in range(len(self.capsules)):
            parts.append((float(cap_depth[k]), 0, k))
        parts.append((float(self.torso_depth[i]), 1, None))
        parts.append((float(self.head_depth[i]), 2, None))
        for side in ("left", "right"):
            parts.append((float(depth[JI[f"{side}_index"]]) - 0.01, 3, side))
        if self.scene.blanket:
            legs = [JI[n] for n in ("left_knee", "right_knee", "left_ankle", "right_ankle")]
            parts.append((float(depth[legs].min()) - 0.12, 4, None))
        parts.sort(key=lambda p: -p[0])
        if self.scene.kind.startswith("ward"):
            # a blanket to the chest: legs and trunk under it, head, arms and hands on top, whatever the depth
            def under(part: tuple) -> bool:
                return part[1] == 1 or (part[1] == 0 and not self.capsules[part[2]][0].endswith(("shoulder", "elbow", "neck")))
            parts = [p for p in parts if p[1] != 4 and under(p)] + [p for p in parts if p[1] == 4] + \
                [p for p in parts if p[1] != 4 and not under(p)]
        for _, kind, arg in parts:
            if kind == 0:
                a, b = ends[arg]
                self._capsule(img, uv[a], uv[b], radii_px[arg, 0], radii_px[arg, 1], self.capsules[arg][4],
                              self.cap_cloth[arg])
            elif kind == 1:
                self._torso(img, i)
            elif kind == 2:
                self._head(img, i)
            elif kind == 3:
                self._hand(img, i, arg, f / max(float(depth[JI[f"{arg}_wrist"]]), 0.1))
            else:
                self._blanket(img, i)
        self._nurse(img, i)
        return self._degrade(img, i)

    def _degrade(self, img: np.ndarray, i: int) -> np.ndarray:
        if self.scene.ir_night:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        img = cv2.convertScaleAbs(img, alpha=float(self.gain[i]))
        k = int(self.noise_order[i])
        img = cv2.subtract(cv2.add(img, self.noise_pos[k]), self.noise_neg[k])
        if self.scene.ir_night:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        return img

    def frames(self) -> Iterator[np.ndarray]:
        """Yield every frame in order."""
        for i in range(len(self.ep.joints_3d)):
            yield self.frame(i)
