"""Finding the patient: the enhancement and the image region under which MediaPipe sees them.

A ceiling-corner camera shows the patient small, somewhere in a wide frame
of bed, rails and room; at night in dim infrared. MediaPipe's pose detector
looks at the whole frame shrunk to 224 px and finds nobody. The search tries,
on a few sample frames of a window, with an IMAGE-mode pose probe:

1. the whole frame, as decoded and, for dim, washed-out or infrared footage,
   contrast-enhanced (client/deid/exposure.py);
2. if that finds the patient in fewer than most samples: 18 overlapping tiles
   (3 x 3 at half and at two-thirds of the frame), each plain and enhanced,
   on two samples, the best three again on all samples;
3. if nobody is found yet: the whole frame at the other three quarter turns.

It keeps the candidate that finds the patient in the most samples (plain
before enhanced, whole frame before a tile, on ties), and widens a tile to
a region around the landmarks it found (the patient's box plus a margin for
movement). Single frames are a noisy judge: the pipeline then runs the pose
stream itself over the window for the chosen view and its simpler
neighbours (`View.alternatives`) and keeps the one it tracks best. The probe uses lenient thresholds (0.3); the choice is checked
again at MediaPipe's default (0.5) and, only if that finds the patient in no
sample at all, the video's pose stream runs at the lenient thresholds too (client/deid/landmark_quality.py drops the implausible poses it lets in).

Landmarks found in a region are mapped back to the frame (`Region.to_frame`),
so every landmark of a record refers to the same frame however the region
moves. The region follows the patient (`RegionTracker`) and the search runs
again when the patient has been lost for a while.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from semiofed.client.deid.exposure import ENHANCE_NONE, ContrastMap, Exposure, measure
from semiofed.client.deid.rotation import PoseProbe, rotate, turn_fractions
from semiofed.common.records.schema import FACE, FACE_MASK, HANDS, HANDS_MASK, POSE, POSE_MASK

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame
WHOLE: Box = (0.0, 0.0, 1.0, 1.0)

SAMPLES = 6  # sample frames per search
TILE_SAMPLES = (1, 4)  # which samples score the tiles
TOP_TILES = 3
MOST = 5  # a whole-frame candidate that finds the patient in this many samples ends the search
TILE_SIZES = (0.5, 2.0 / 3.0)
MARGIN = 0.6  # of the patient's box, each side: the movement of a seizure stays in the region
MIN_REGION = 0.35  # of the frame's side: a region never zooms onto a few pixels
WHOLE_ENOUGH = 0.8  # a region this large on both sides is the whole frame
LENIENT = 0.3  # the probe's thresholds (detection, presence, tracking)
MIN_VISIBILITY = 0.3


def tiles() -> list[Box]:
    """The tiles of the search: 3 x 3 overlapping squares-of-the-frame at each of TILE_SIZES."""
    out = []
    for size in TILE_SIZES:
        for i in range(3):
            for j in range(3):
                x0, y0 = (1.0 - size) * j / 2.0, (1.0 - size) * i / 2.0
                out.append((x0, y0, x0 + size, y0 + size))
    return out


def crop_box(frames: np.ndarray, box: Box) -> np.ndarray:
    """Frames [..., H, W, C] cut to a box of fractions (a view)."""
    height, width = frames.shape[-3], frames.shape[-2]
    x0, y0, x1, y1 = box
    c0, r0 = int(round(x0 * width)), int(round(y0 * height))
    c1, r1 = max(int(round(x1 * width)), c0 + 1), max(int(round(y1 * height)), r0 + 1)
    return frames[..., r0:r1, c0:c1, :]


def rotate_box(box: Box, degrees: int) -> Box:
    """Where a box of the frame lies in the frame turned clockwise by `degrees` (fractions of the turned frame)."""
    if degrees == 0:
        return box
    x0, y0, x1, y1 = box
    (u0, v0), (u1, v1) = turn_fractions(x0, y0, degrees), turn_fractions(x1, y1, degrees)
    return min(u0, u1), min(v0, v1), max(u0, u1), max(v0, v1)


def map_points(points: np.ndarray, box: Box) -> np.ndarray:
    """Landmarks [..., 3+] in fractions of a box's crop to fractions of the frame (z scaled with x)."""
    x0, y0, x1, y1 = box
    out = points.copy()
    out[..., 0] = x0 + points[..., 0] * (x1 - x0)
    out[..., 1] = y0 + points[..., 1] * (y1 - y0)
    out[..., 2] = points[..., 2] * (x1 - x0)
    return out


_LANDMARKS = ((POSE, POSE_MASK), (HANDS, HANDS_MASK), (FACE, FACE_MASK))


def to_frame(arrays: dict[str, np.ndarray], box: Box, rotation: int) -> dict[str, np.ndarray]:
    """Landmark arrays found in the region `box` (of the unturned frame), turned by `rotation`, in turned-frame fractions."""
    if box == WHOLE:
        return arrays
    turned = rotate_box(box, rotation)
    out = dict(arrays)
    for key, mask in _LANDMARKS:
        if key in arrays:
            mapped = map_points(arrays[key], turned)
            out[key] = np.where(np.expand_dims(arrays[mask], tuple(range(arrays[mask].ndim, mapped.ndim))),
                                mapped, arrays[key])
    return out


def landmark_box(pose: np.ndarray) -> Box | None:
    """The box of the visible landmarks of poses [N, 33, 4] (fractions), or None."""
    seen = pose[..., 3] >= MIN_VISIBILITY
    if not seen.any():
        return None
    xs, ys = np.clip(pose[..., 0][seen], 0, 1), np.clip(pose[..., 1][seen], 0, 1)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def region_around(box: Box, aspect: float) -> Box:
    """The region for a patient's box: widened by MARGIN each side, at least MIN_REGION, within the frame.

    aspect is the frame's width / height, so that MIN_REGION is of the shorter side in pixels."""
    x0, y0, x1, y1 = box
    extent = max(x1 - x0, (y1 - y0) / aspect)  # in widths
    half_w = max((x1 - x0) / 2 + MARGIN * extent, MIN_REGION * min(1.0, 1.0 / aspect) / 2)
    half_h = max((y1 - y0) / 2 + MARGIN * extent * aspect, MIN_REGION * min(1.0, aspect) / 2)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2

    def span(centre: float, half: float) -> tuple[float, float]:
        half = min(half, 0.5)
        lo = min(max(centre - half, 0.0), 1.0 - 2 * half)
        return lo, lo + 2 * half

    (rx0, rx1), (ry0, ry1) = span(cx, half_w), span(cy, half_h)
    if rx1 - rx0 >= WHOLE_ENOUGH and ry1 - ry0 >= WHOLE_ENOUGH:
        return WHOLE
    return float(rx0), float(ry0), float(rx1), float(ry1)


@dataclass(frozen=True)
class View:
    """How a video is looked at: the enhancement, the region of the (unturned) frame, the detection thresholds."""

    enhancement: ContrastMap | None = None
    region: Box = WHOLE
    found: int = 0  # samples where the search found the patient
    samples: int = 0
    rotation: int = 0  # the rotation the search found the patient at
    exposure: Exposure | None = None

    @property
    def enhancement_name(self) -> str:
        """'none' or the enhancement's name."""
        return self.enhancement.name if self.enhancement else ENHANCE_NONE

    def enhance(self, frames: np.ndarray) -> np.ndarray:
        """The frames as the landmarks and the STCNN see them."""
        return self.enhancement(frames) if self.enhancement else frames

    def alternatives(self) -> list[View]:
        """This view and its simpler neighbours (plain before enhanced, whole frame before region), simplest first.

        The search scores single frames; the pose stream, which tracks from frame to frame, can do better on a
        simpler view. The pipeline runs the stream on each of these over the window and keeps the best."""
        enhancements = [None, self.enhancement] if self.enhancement else [None]
        regions = [WHOLE, self.region] if self.region != WHOLE else [WHOLE]
        return [replace(self, enhancement=e, region=r) for e in enhancements for r in regions]


@dataclass
class _Candidate:
    enhanced: bool
    box: Box
    rotation: int = 0
    found: int = 0
    poses: list[np.ndarray] = field(default_factory=list)  # [33, 4] in fractions of the box's crop

    @property
    def order(self) -> tuple[int, int, int]:
        # the most samples; then the plain frame and the whole frame (the video's own rotation is scored first, and
        # max() keeps the first of equals)
        return self.found, -int(self.enhanced), int(self.box == WHOLE)


def _score(candidate: _Candidate, samples: dict[bool, np.ndarray], which: list[int], probe: PoseProbe) -> _Candidate:
    found, poses = 0, []
    for i in which:
        frame = rotate(crop_box(samples[candidate.enhanced][i], candidate.box), candidate.rotation)
        pose = probe.pose(frame)
        if pose is not None:
            found += 1
            poses.append(pose)
    candidate.found, candidate.poses = found, poses
    return candidate


def sample_frames(frames: np.ndarray, n: int = SAMPLES) -> np.ndarray:
    """n frames evenly spread over a window [N, H, W, 3]."""
    return frames[np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))]


def search(frames: np.ndarray, lenient_probe: PoseProbe, *, rotation: int = 0, enhance: bool = True,
           find_region: bool = True) -> View:
    """The view of a window's frames [N, H, W, 3] (after the manifest's ROI, before any rotation) showing the patient.

    `rotation` is the video's rotation so far: the candidates are looked at turned by it, and the other three
    rotations are tried only when nobody is found."""
    picks = sample_frames(frames)
    exposure = measure(picks)
    contrast = ContrastMap(exposure) if enhance and exposure.poor else None
    samples = {False: picks, True: contrast(picks) if contrast else picks}
    every = list(range(len(picks)))
    options = (False, True) if contrast else (False,)
    scored = [_score(_Candidate(e, WHOLE, rotation), samples, every, lenient_probe) for e in options]
    best = max(scored, key=lambda c: c.order)
    if best.found < MOST and find_region:
        which = [i for i in TILE_SAMPLES if i < len(picks)]
        tiled = [_score(_Candidate(e, box, rotation), samples, which, lenient_probe) for box in tiles() for e in options]
        top = sorted((c for c in tiled if c.found), key=lambda c: c.order, reverse=True)[:TOP_TILES]
        scored += [_score(c, samples, every, lenient_probe) for c in top]
        best = max(scored, key=lambda c: c.order)
    if best.found == 0:
        others = [r for r in (0, 90, 180, 270) if r != rotation]
        scored += [_score(_Candidate(e, WHOLE, r), samples, every, lenient_probe) for r in others for e in options]
        best = max(scored, key=lambda c: c.order)
    if best.found == 0:
        return View(samples=len(picks), rotation=rotation, exposure=exposure)
    region = best.box
    if region != WHOLE:
        # the tile is widened or narrowed to the patient it found, in fractions of the (unturned) frame
        box = landmark_box(np.stack([unturn(p, best.rotation) for p in best.poses]))
        if box is not None:
            height, width = frames.shape[1:3]
            seen = map_points(np.array([[box[0], box[1], 0.0], [box[2], box[3], 0.0]]), region)
            region = region_around((seen[0, 0], seen[0, 1], seen[1, 0], seen[1, 1]), width / height)
    view = View(enhancement=contrast if best.enhanced else None, region=region, found=best.found,
                samples=len(picks), rotation=best.rotation, exposure=exposure)
    log.info("patient found in %d of %d samples: enhancement %s, region %s", view.found, view.samples,
             view.enhancement_name, [round(v, 3) for v in view.region])
    return view


def unturn(pose: np.ndarray, rotation: int) -> np.ndarray:
    """Pose fractions of a frame turned clockwise by `rotation`, in fractions of the unturned frame."""
    out = pose.copy()
    out[..., 0], out[..., 1] = turn_fractions(pose[..., 0], pose[..., 1], -rotation)
    return out


class RegionTracker:
    """The region of one video: moved to keep the patient inside, and widened to the frame when they are lost.

    After each window the landmarks it found (in frame fractions, unturned)
    are compared with the region: a patient box that reaches into the outer
    tenth of the region re-centres it on them (never shrinking it). A region
    whose window found nobody for LOST_WINDOWS windows in a row is given up:
    the search runs again on the next window.
    """

    LOST_WINDOWS = 3
    EDGE = 0.1

    def __init__(self, aspect: float) -> None:
        self.aspect = aspect
        self.lost = 0
        self.moves = 0

    def update(self, region: Box, pose_box: Box | None) -> tuple[Box, bool]:
        """The region for the next window, and whether to search again."""
        if pose_box is None:
            self.lost += 1
            return region, self.lost >= self.LOST_WINDOWS
        self.lost = 0
        if region == WHOLE:
            return region, False
        x0, y0, x1, y1 = region
        w, h = x1 - x0, y1 - y0
        inner = (x0 + self.EDGE * w, y0 + self.EDGE * h, x1 - self.EDGE * w, y1 - self.EDGE * h)
        px0, py0, px1, py1 = pose_box
        if px0 >= inner[0] and py0 >= inner[1] and px1 <= inner[2] and py1 <= inner[3]:
            return region, False
        wanted = region_around(pose_box, self.aspect)
        # never smaller than before: the patient's movement is what pushed them to the edge
        cx, cy = (wanted[0] + wanted[2]) / 2, (wanted[1] + wanted[3]) / 2
        half_w, half_h = max(w, wanted[2] - wanted[0]) / 2, max(h, wanted[3] - wanted[1]) / 2
        nx0 = min(max(cx - half_w, 0.0), max(1.0 - 2 * half_w, 0.0))
        ny0 = min(max(cy - half_h, 0.0), max(1.0 - 2 * half_h, 0.0))
        moved = (nx0, ny0, min(nx0 + 2 * half_w, 1.0), min(ny0 + 2 * half_h, 1.0))
        self.moves += 1
        if moved[2] - moved[0] >= WHOLE_ENOUGH and moved[3] - moved[1] >= WHOLE_ENOUGH:
            return WHOLE, False
        return moved, False
