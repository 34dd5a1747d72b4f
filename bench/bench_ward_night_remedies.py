"""Grey-level remedies for the night ward phantom: can any of them make MediaPipe find the patient? (issue 15)

One night clip of phantom/ward.py (the supine scene of bench_ward_phantom.py, seed 300) is rendered at 1920x1080,
encoded as H.264 and decoded at full size. Sample frames are cropped to a square around the ground-truth body (1.6x
its extent: the best region any search could choose, at the full resolution), then given to MediaPipe's IMAGE-mode
pose landmarker under each remedy, quarter turn and detection threshold. Reported: the frames with a pose (before
any plausibility check) and their keypoint error against the rendered truth (phantom/detect.py's NME, as
bench_ward_phantom.py), for the best quarter turn of each remedy and threshold. The same is done for the daylight
clip with its colour taken away, and in colour, to separate colour from darkness.

Usage: python bench/bench_ward_night_remedies.py [--frames 12] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ward_phantom import FPS, render_clip  # noqa: E402
from report import write_section  # noqa: E402

from semiofed.client.deid.exposure import ContrastMap, measure  # noqa: E402
from semiofed.client.deid.patient_search import unturn  # noqa: E402
from semiofed.client.deid.rotation import ROTATIONS, PoseProbe, rotate  # noqa: E402
from semiofed.phantom.detect import PoseResult, keypoint_error  # noqa: E402

THRESHOLDS = (0.5, 0.3, 0.15)
SECONDS = 6.0


def _grey(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def _colour_map(frames: np.ndarray, cmap: int) -> np.ndarray:
    return np.stack([cv2.cvtColor(cv2.applyColorMap(g, cmap), cv2.COLOR_BGR2RGB) for g in _grey(frames)])


def remedies(crop: np.ndarray) -> dict[str, np.ndarray]:
    """Each remedy applied to RGB crops [N, S, S, 3]."""
    enhanced = ContrastMap(measure(crop))(crop)
    clahe = cv2.createCLAHE(3.0, (8, 8))
    return {
        "none": crop,
        "contrast (the pipeline's: tone curve + CLAHE)": enhanced,
        "contrast, false colour (turbo)": _colour_map(enhanced, cv2.COLORMAP_TURBO),
        "contrast, false colour (jet)": _colour_map(enhanced, cv2.COLORMAP_JET),
        "contrast, inverted": 255 - enhanced,
        "contrast, non-local-means denoising + CLAHE": _rgb(np.stack(
            [clahe.apply(cv2.fastNlMeansDenoising(g, None, 12, 7, 21)) for g in _grey(enhanced)])),
    }


def render(kind: str, ir: bool, grey: bool, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(decoded RGB frames [T, 1080, 1920, 3], ground-truth pose landmarks [T, 33, 2] in pixels) of one ward clip."""
    path = folder / f"{kind}-{ir}-{grey}.mp4"
    ep = render_clip(path, kind, 300, SECONDS, ir, False, grey)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return decoded, np.asarray(ep.joints_2d)


def measure_remedies(frames: np.ndarray, truth: np.ndarray, n: int, probes: dict[float, PoseProbe]) -> list[list[str]]:
    """Table rows: remedy, threshold, best quarter turn, frames with a pose, keypoint error."""
    picks = np.unique(np.linspace(5, len(frames) - 1, n).round().astype(int))
    joints = truth[picks]
    xy = joints[np.isfinite(joints).all(axis=-1)]
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    side = max(x1 - x0, y1 - y0) * 1.6
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = (max(int(cx - side / 2), 0), max(int(cy - side / 2), 0), int(cx + side / 2), int(cy + side / 2))
    crop = np.ascontiguousarray(frames[picks, box[1]:box[3], box[0]:box[2]])
    rows = []
    for name, variant in remedies(crop).items():
        for threshold, probe in probes.items():
            best: tuple[int, float, int] = (0, float("nan"), 0)
            for turn in ROTATIONS:
                points = np.full((len(picks), 33, 2), np.nan)
                found = np.zeros(len(picks), bool)
                for k, frame in enumerate(variant):
                    pose = probe.pose(rotate(frame, turn))
                    if pose is not None:
                        p = unturn(pose[None], turn)[0]
                        points[k, :, 0] = box[0] + p[:, 0] * (box[2] - box[0])
                        points[k, :, 1] = box[1] + p[:, 1] * (box[3] - box[1])
                        found[k] = True
                if found.sum() > best[0]:
                    best = (int(found.sum()), keypoint_error(PoseResult(points, found), joints)["nme"], turn)
            rows.append([name, f"{threshold:g}", f"{best[2]}", f"{best[0]} of {len(variant)}",
                         "-" if not best[0] else f"{best[1]:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    probes = {t: PoseProbe(min_confidence=t) for t in THRESHOLDS}
    lines = ["| clip | remedy | threshold | best quarter turn | frames with a pose | keypoint error / body size |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for clip, (ir, grey) in (("IR night (supine)", (True, False)), ("day, greyscale (supine)", (False, True)),
                                 ("day, colour (supine)", (False, False))):
            frames, truth = render("ward_supine", ir, grey, Path(tmp))
            for row in measure_remedies(frames, truth, args.frames, probes):
                if clip.startswith("day") and row[0] not in ("none",):
                    continue  # the daylight clips are the yardstick: as filmed only
                lines.append("| " + " | ".join([clip] + row) + " |")
                print(lines[-1], file=sys.stderr, flush=True)
    for probe in probes.values():
        probe.close()
    body = (f"bench/bench_ward_night_remedies.py: the supine ward clip (seed 300, {SECONDS:g} s, {FPS:g} fps, "
            f"1920x1080, H.264), {args.frames} frames, a crop around the ground-truth body at full resolution, "
            "MediaPipe pose (IMAGE mode) at each threshold and quarter turn (the best turn shown). Frames with a "
            "pose before any plausibility check; error = phantom/detect.py's NME (13 core landmarks against the truth, / body size).\n\n"
            + "\n".join(lines))
    print(body)
    if args.write:
        print("written to", write_section("ward-night-remedies", "Night ward phantom: grey-level remedies (issue 15)", body))


if __name__ == "__main__":
    main()
