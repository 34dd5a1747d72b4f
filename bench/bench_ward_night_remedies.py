"""Grey-level remedies for the night ward phantom: can any of them make MediaPipe find the patient? (issue 15)

One night clip of phantom/ward.py (the supine scene of bench_ward_phantom.py, seed 300) is rendered at 1920x1080,
encoded as H.264 and decoded at full size. Sample frames are cropped to a square around the ground-truth body (1.6x
its extent: the best region any search could choose, at the full resolution), then given to MediaPipe's IMAGE-mode
pose landmarker under each remedy, quarter turn and detection threshold. Reported: the frames with a pose (before
any plausibility check) and their keypoint error against the rendered truth (phantom/detect.py's NME, as
bench_ward_phantom.py), for the best quarter turn of each remedy and threshold. The same is done for the daylight
clip with its colour taken away, and in colour, to separate colour from darkness.

With --ceiling: the best region any search could choose, at the pipeline's own resolution. The clips are decoded,
shrunk to 640x360 and taken at 15 fps as `site prepare` does, cut to a square around the ground-truth visible upper
body (head, shoulders, arms: the blanket hides the rest) with a margin of 1.3x or 1.8x its extent, and tracked by
the pose stream (VIDEO mode, client/deid/landmarks.py) at MediaPipe's default and at the lenient detection
threshold, plain and contrast-enhanced. Reported: the share of frames with a pose and its keypoint error against the
truth; the pipeline's plausibility checks are not applied, so this is what a perfect patient search could reach.

Usage: python bench/bench_ward_night_remedies.py [--frames 12] [--ceiling] [--write]
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
from semiofed.client.deid.landmarks import PoseStream  # noqa: E402
from semiofed.client.deid.patient_search import unturn  # noqa: E402
from semiofed.client.deid.rotation import ROTATIONS, PoseProbe, rotate  # noqa: E402
from semiofed.common.records.schema import POSE, POSE_MASK  # noqa: E402
from semiofed.phantom.body import JOINT_INDEX  # noqa: E402
from semiofed.phantom.detect import PoseResult, keypoint_error  # noqa: E402

THRESHOLDS = (0.5, 0.3, 0.15)
SECONDS = 6.0
# --ceiling: the pipeline's decode size and rate, the visible upper body, the margins around it
DECODE_SIZE, DECODE_STEP = (640, 360), 2  # 1920x1080 / 3, every 2nd frame of 30 fps
UPPER_BODY = tuple(JOINT_INDEX[n] for n in ("head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                                             "left_wrist", "right_wrist"))
MARGINS = (1.3, 1.8)
CEILING_CLIPS = (("IR night (supine)", "ward_supine", 300, True, False), ("IR night (supine)", "ward_supine", 301, True, False),
                 ("IR night (curled on the side)", "ward_side", 300, True, False),
                 ("IR night (curled on the side)", "ward_side", 301, True, False),
                 ("day, greyscale (supine)", "ward_supine", 300, False, True),
                 ("day, colour (supine)", "ward_supine", 300, False, False))


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


def ceiling_rows(name: str, kind: str, seed: int, ir: bool, grey: bool, folder: Path) -> list[list[str]]:
    """Table rows of one clip: margin, enhancement, threshold, frames with a pose, keypoint error, PCK@0.1."""
    path = folder / f"{kind}-{seed}-{ir}-{grey}.mp4"
    ep = render_clip(path, kind, seed, SECONDS, ir, False, grey)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picks = np.arange(0, len(decoded), DECODE_STEP)
    scale = decoded[0].shape[1] / DECODE_SIZE[0]
    frames = np.stack([cv2.resize(decoded[i], DECODE_SIZE, interpolation=cv2.INTER_AREA) for i in picks])
    truth = np.asarray(ep.joints_2d)
    upper = truth[:, list(UPPER_BODY)].reshape(-1, 2)
    upper = upper[np.isfinite(upper).all(axis=1)] / scale
    (x0, y0), (x1, y1) = upper.min(axis=0), upper.max(axis=0)
    stamps = (picks * 1000.0 / FPS).astype(np.int64)
    rows = []
    for margin in MARGINS:
        side = max(x1 - x0, y1 - y0) * margin
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (max(int(cx - side / 2), 0), max(int(cy - side / 2), 0), int(cx + side / 2), int(cy + side / 2))
        crop = np.ascontiguousarray(frames[:, box[1]:box[3], box[0]:box[2]])
        for enhanced in (False, True):
            seen = ContrastMap(measure(crop[::5]))(crop) if enhanced else crop
            for threshold in (0.5, 0.3):
                with PoseStream(min_detection_confidence=threshold) as stream:
                    arrays = stream.process(seen, stamps)
                found = np.asarray(arrays[POSE_MASK]).astype(bool)
                points = np.full((len(truth), 33, 2), np.nan)
                kept = np.zeros(len(truth), bool)
                for k, i in enumerate(picks):
                    if found[k]:
                        xy = np.asarray(arrays[POSE][k])[:, :2]
                        points[i, :, 0] = (box[0] + xy[:, 0] * (box[2] - box[0])) * scale
                        points[i, :, 1] = (box[1] + xy[:, 1] * (box[3] - box[1])) * scale
                        kept[i] = True
                error = keypoint_error(PoseResult(points, kept), truth) if kept.any() else {"nme": float("nan"), "pck10": float("nan")}
                rows.append([f"{name}, seed {seed}", f"{margin:g}x ({box[2] - box[0]} px)",
                             "contrast" if enhanced else "none", f"{threshold:g}", f"{found.mean():.0%}",
                             "-" if not kept.any() else f"{error['nme']:.2f}",
                             "-" if not kept.any() else f"{error['pck10']:.2f}"])
    return rows


def ceiling(write: bool) -> None:
    """The --ceiling table: a perfect region at the pipeline's resolution."""
    lines = ["| clip | region (side at 640x360) | enhancement | detection threshold | frames with a pose | "
             "keypoint error / body size | PCK@0.1 |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for clip in CEILING_CLIPS:
            for row in ceiling_rows(*clip, Path(tmp)):
                lines.append("| " + " | ".join(row) + " |")
                print(lines[-1], file=sys.stderr, flush=True)
    body = (f"`python bench/bench_ward_night_remedies.py --ceiling`: ward clips of {SECONDS:g} s at 1920x1080 "
            f"{FPS:g} fps (H.264), decoded, shrunk to {DECODE_SIZE[0]}x{DECODE_SIZE[1]} and taken at "
            f"{FPS / DECODE_STEP:g} fps as `site prepare` does, cut to a square around the ground-truth visible upper "
            "body (head, shoulders, arms) at the margin shown, tracked by the pose stream (VIDEO mode; presence and "
            "tracking thresholds 0.3). Every pose MediaPipe returns is counted (no plausibility check). Error: "
            "phantom/detect.py's NME and PCK@0.1 over the 13 core landmarks against the rendered truth.\n\n"
            + "\n".join(lines))
    print(body)
    if write:
        print("written to", write_section("ward-night-ceiling", "Night ward phantom: the best region at the pipeline's "
                                          "resolution (issue 15)", body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--ceiling", action="store_true", help="measure the best region at the pipeline's resolution")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if args.ceiling:
        ceiling(args.write)
        return
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
