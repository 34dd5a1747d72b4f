"""How a video is exposed, and the contrast enhancement that shows a patient in dim or washed-out infrared footage.

Monitoring-unit cameras film the night in near-infrared: greyscale, dim or
washed out (a low range of grey around the middle), with sensor noise.
MediaPipe's detectors were trained on well-lit colour images and find nobody
in such frames. `ContrastMap` undoes most of it on the luminance only:

1. a light Gaussian blur (sensor noise would otherwise be stretched with the signal);
2. a fixed tone curve, the same for every frame of the video: the video's own 1st to 99th
   luminance percentiles stretched to the full range, then a gamma that brings
   its mean luminance to mid-grey;
3. contrast-limited adaptive histogram equalisation (CLAHE), which brings up the
   local contrast of a body under a blanket.

The curve is fixed per video (from sample frames of the first window), so the
brightness of a frame does not flicker with what moves in it: a flicker would
reach the STCNN as movement. Only footage that is dim, low in contrast or
greyscale (`Exposure.poor`) is offered the enhancement, and the patient search
(client/deid/patient_search.py) keeps it only where MediaPipe finds the
patient more often with it: a well-lit colour video is never changed. The choice and the exposure figures go into the
record's capture provenance; no pixel leaves the site.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ENHANCE_NONE = "none"
ENHANCE_CONTRAST = "contrast"

LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0
TARGET_MEAN = 0.45  # of the full range, after the stretch
GAMMA_RANGE = (0.35, 2.5)  # the gamma is kept within this: a near-black video is brightened, not blown out
CLAHE_CLIP = 2.0
CLAHE_TILES = (8, 8)
DENOISE_KERNEL = (5, 5)
GREYSCALE_CHROMA = 4.0  # mean |R-G| + |G-B| below this: an infrared (greyscale) camera
# Only footage like this is offered the enhancement: a well-lit colour video is left as it is
DIM_MEAN = 70.0  # mean luminance below this: dim
LOW_CONTRAST = 120.0  # 1st-99th percentile spread below this: washed out or dim


@dataclass(frozen=True)
class Exposure:
    """Luminance figures of a video's sample frames (0-255)."""

    mean: float
    low: float  # the 1st percentile
    high: float  # the 99th percentile
    greyscale: bool

    @property
    def contrast(self) -> float:
        """The spread of the luminance between the percentiles (0-255)."""
        return self.high - self.low

    @property
    def poor(self) -> bool:
        """Whether the footage is dim, low in contrast or infrared: worth trying the enhancement on."""
        return self.greyscale or self.mean < DIM_MEAN or self.contrast < LOW_CONTRAST

    def to_json(self) -> dict[str, float | bool]:
        """The figures as a JSON object (rounded: they describe the footage, they do not reproduce it)."""
        return {"mean": round(self.mean, 1), "low": round(self.low, 1), "high": round(self.high, 1),
                "greyscale": self.greyscale}


def luminance(frames: np.ndarray) -> np.ndarray:
    """The Rec. 601 luminance [N, H, W] uint8 of RGB frames [N, H, W, 3]."""
    flat = frames.reshape(-1, frames.shape[-2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(frames.shape[:-1])


def measure(frames: np.ndarray) -> Exposure:
    """The exposure of sample RGB frames [N, H, W, 3] uint8."""
    grey = luminance(frames)
    low, high = np.percentile(grey, (LOW_PERCENTILE, HIGH_PERCENTILE))
    step = max(1, frames.shape[1] // 64)  # the chroma test needs only a sparse grid of pixels
    sub = frames[:, ::step, ::step].astype(np.int16)
    chroma = float(np.mean(np.abs(sub[..., 0] - sub[..., 1]) + np.abs(sub[..., 1] - sub[..., 2])))
    return Exposure(float(grey.mean()), float(low), float(high), chroma < GREYSCALE_CHROMA)


class ContrastMap:
    """The fixed tone curve and CLAHE of one video, applied to the luminance of each frame."""

    name = ENHANCE_CONTRAST

    def __init__(self, exposure: Exposure) -> None:
        self.exposure = exposure
        low, high = exposure.low, max(exposure.high, exposure.low + 1.0)
        x = np.clip((np.arange(256, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        stretched_mean = float(np.clip((exposure.mean - low) / (high - low), 1e-3, 1 - 1e-3))
        gamma = float(np.clip(np.log(TARGET_MEAN) / np.log(stretched_mean), *GAMMA_RANGE))
        self.gamma = gamma
        self._curve = np.round(255.0 * x ** gamma).astype(np.uint8)
        self._clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=CLAHE_TILES)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Enhanced copies of RGB frames [N, H, W, 3] uint8 (colour kept: only the luminance changes)."""
        out = np.empty_like(frames)
        for i, frame in enumerate(frames):
            lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)
            lum = cv2.GaussianBlur(lab[..., 0], DENOISE_KERNEL, 0)
            lab[..., 0] = self._clahe.apply(cv2.LUT(lum, self._curve))
            out[i] = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        return out

    def to_json(self) -> dict[str, object]:
        """What was done, for the record's provenance."""
        return {"name": self.name, "gamma": round(self.gamma, 3), "clahe_clip": CLAHE_CLIP,
                "percentiles": [LOW_PERCENTILE, HIGH_PERCENTILE]}
