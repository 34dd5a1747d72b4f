"""Hard phantom scenes of a monitoring ward: a ceiling-corner camera at 1920x1080, night IR, a blanket to the chest.

These scenes are never drawn for a cohort (phantom/dataset.py keeps its
scene kinds); they are the yardstick for the patient search
(bench/bench_ward_phantom.py, tests/test_ward_footage.py). The camera hangs
in the corner at the foot of the bed, 2.6 m up, looking down the bed with a
wide lens, so the patient fills a small, oblique part of the frame. The bed
has rails; the patient lies on their back (`ward_supine`) or curled on
their side (`ward_side`) under a blanket that reaches the chest, in plain or
striped pyjamas.
"""

from __future__ import annotations

import numpy as np

from semiofed.phantom.camera import Camera
from semiofed.phantom.scene import BED_LENGTH, BED_TOP, BED_WIDTH, CLOTHING_PATTERNS, SceneSpec

WARD_SCENES = ("ward_supine", "ward_side")
WARD_SIZE = (1920, 1080)


def ward_scene(kind: str, rng: np.random.Generator, *, ir_night: bool = True, nurse_s: float | None = None,
               size: tuple[int, int] = WARD_SIZE, clothing: str = "plain") -> SceneSpec:
    """One ward scene: the corner camera's placement and the footage's degradation drawn from rng; `clothing` is the
    patient's ("stripes": striped pyjamas)."""
    if kind not in WARD_SCENES:
        raise ValueError(f"unknown ward scene {kind!r}; use one of {', '.join(WARD_SCENES)}")
    if clothing not in CLOTHING_PATTERNS:
        raise ValueError(f"unknown clothing pattern {clothing!r}; use one of {', '.join(CLOTHING_PATTERNS)}")
    side = 1.0 if rng.random() < 0.5 else -1.0
    position = (-BED_LENGTH / 2 - rng.uniform(0.5, 0.9), rng.uniform(2.4, 2.7), side * (BED_WIDTH / 2 + rng.uniform(0.8, 1.2)))
    target = (rng.uniform(0.0, 0.3), BED_TOP, 0.0)
    camera = Camera(tuple(round(float(v), 4) for v in position), tuple(round(float(v), 4) for v in target),
                    round(float(rng.normal(0, 2)), 3), round(float(rng.uniform(80, 95)), 3), size[0], size[1])
    return SceneSpec(
        kind=kind, camera=camera, ir_night=ir_night,
        noise_sigma=round(float(rng.uniform(4.0, 7.0)), 3) if ir_night else 2.0,
        crf=int(rng.integers(24, 29)),
        light_gain=round(float(rng.uniform(0.45, 0.65)), 3) if ir_night else 1.0,
        light_change_s=None, light_change_gain=1.0, blanket=True, nurse_s=nurse_s,
        wall_bgr=(150, 155, 160), bedding_bgr=(215, 210, 200), recline_deg=0.0, clothing_pattern=clothing,
    )
