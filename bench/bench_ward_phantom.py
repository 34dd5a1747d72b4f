"""The hard ward phantom (phantom/ward.py) through `site prepare`'s de-identification: pose found and keypoint error.

Each condition renders --clips seizure videos at 1920x1080, 30 fps (a ceiling-corner camera at the foot of a
railed bed, a blanket to the chest), encodes them as H.264 and de-identifies them as `site prepare` does, with
the patient search off (no enhancement, whole frame) and on. The keypoint error is MediaPipe's pose against the
rendered ground truth on the frames where a pose was kept (phantom/detect.py: mean error over 13 core landmarks
divided by the body's size, and PCK@0.1).

Usage: python bench/bench_ward_phantom.py [--clips 2] [--seconds 8] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from semiofed.client.deid.patient_search import unturn  # noqa: E402
from semiofed.client.deid.pipeline import Deidentifier, DeidentifyConfig  # noqa: E402
from semiofed.common.records import schema as rec  # noqa: E402
from semiofed.phantom.body import sample_anthropometry  # noqa: E402
from semiofed.phantom.detect import PoseResult, keypoint_error  # noqa: E402
from semiofed.phantom.encode import write_mp4  # noqa: E402
from semiofed.phantom.episode import Episode, EpisodeSpec, simulate  # noqa: E402
from semiofed.phantom.render import Renderer  # noqa: E402
from semiofed.phantom.semiology import plan_seizure, sample_traits  # noqa: E402
from semiofed.phantom.ward import WARD_SIZE, ward_scene  # noqa: E402

FPS = 30.0
# (scene, condition, IR night, nurse, greyscale, clothing): the greyscale daylight rows are the daylight scenes with
# the colour taken away (a monochrome camera in daylight): they separate what the loss of colour costs from darkness
# and noise; the striped rows dress the patient in striped pyjamas
CONDITIONS = [("ward_supine", "IR night", True, False, False, "plain"),
              ("ward_supine", "IR night, nurse", True, True, False, "plain"),
              ("ward_side", "IR night (curled on the side)", True, False, False, "plain"),
              ("ward_supine", "IR night, striped pyjamas", True, False, False, "stripes"),
              ("ward_supine", "day", False, False, False, "plain"),
              ("ward_side", "day (curled on the side)", False, False, False, "plain"),
              ("ward_supine", "day, striped pyjamas", False, False, False, "stripes"),
              ("ward_side", "day, striped pyjamas (curled on the side)", False, False, False, "stripes"),
              ("ward_supine", "day, greyscale", False, False, True, "plain"),
              ("ward_side", "day, greyscale (curled on the side)", False, False, True, "plain")]


def episode(kind: str, seed: int, seconds: float, ir: bool, nurse: bool, clothing: str = "plain") -> EpisodeSpec:
    """One ward clip whose seizure fills most of `seconds`."""
    rng = np.random.default_rng([seed, 15])
    body, traits = sample_anthropometry(rng), sample_traits(rng, 0.5)
    label = ("FOS", "TCS")[seed % 2]
    plan = plan_seizure(traits, label, (seconds, seconds), rng)
    scene = ward_scene(kind, rng, ir_night=ir, nurse_s=1.0 if nurse else None, clothing=clothing)
    return EpisodeSpec("P001", "P001-S1", body, traits, replace(plan, video_s=seconds), scene, FPS, seed)


def greyscale(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The renderer's BGR frames with their colour taken away: the Rec. 601 luminance in all three channels."""
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        yield np.repeat(grey[:, :, None], 3, axis=2)


def render_clip(path: Path, kind: str, seed: int, seconds: float, ir: bool, nurse: bool, grey: bool,
                clothing: str = "plain") -> Episode:
    """Render one ward clip of `episode` to an H.264 file at `path` (its colour taken away if `grey`); its episode."""
    spec = episode(kind, seed, seconds, ir, nurse, clothing)
    ep = simulate(spec)
    frames = Renderer(ep).frames()
    write_mp4(path, greyscale(frames) if grey else frames, spec.fps, spec.size, spec.scene.crf)
    return ep


def pose_in_pixels(arrays: dict[str, np.ndarray], times: np.ndarray, n_frames: int) -> PoseResult:
    """The record's kept poses in pixels of the rendered frame, at the rendered frame nearest each record frame."""
    width, height = WARD_SIZE
    points = np.full((n_frames, 33, 2), np.nan)
    found = np.zeros(n_frames, bool)
    for i, t in enumerate(times):
        k = min(int(round(t * FPS)), n_frames - 1)
        if arrays[rec.POSE_MASK][i]:
            pose = unturn(arrays[rec.POSE][i], int(arrays[rec.ROTATION][i]))
            points[k] = pose[:, :2] * (width, height)
            found[k] = True
    return PoseResult(points, found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    configs = {"off": DeidentifyConfig(streams=("pose",), enhance=False, find_patient=False),
               "on": DeidentifyConfig(streams=("pose",))}
    rows = ["| scene | condition | clips | pose, search off | pose, search on | NME, on | PCK@0.1, on | "
            "enhancement / region (on) | x real time (on, pose only) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, name, ir, nurse, grey, clothing in CONDITIONS:
            rates: dict[str, list[float]] = {"off": [], "on": []}
            nme, pck, views, speed = [], [], [], []
            for clip in range(args.clips):
                path = Path(tmp) / "ward.mp4"
                ep = render_clip(path, kind, 300 + clip, args.seconds, ir, nurse, grey, clothing)
                for label, config in configs.items():
                    with Deidentifier(config) as deidentifier:
                        start = time.perf_counter()
                        result = deidentifier.run(path)
                        wall = time.perf_counter() - start
                    rates[label].append(result.detection_rate["pose"])
                    if label == "on":
                        err = keypoint_error(pose_in_pixels(result.arrays, result.arrays[rec.FRAME_TIMES],
                                                            len(ep.joints_2d)), ep.joints_2d)
                        nme.append(err["nme"])
                        pck.append(err["pck10"])
                        region = result.capture["region"]
                        views.append(f"{result.capture['enhancement']['name']} / "
                                     + ("whole" if region == [0.0, 0.0, 1.0, 1.0] else
                                        f"{region[2] - region[0]:.0%}x{region[3] - region[1]:.0%}"))
                        speed.append(args.seconds / wall)
                print(f"  {kind}/{name} clip {clip}: off {rates['off'][-1]:.2f} on {rates['on'][-1]:.2f} "
                      f"{views[-1]}", file=sys.stderr, flush=True)
            rows.append(f"| {kind} | {name} | {args.clips} | {np.mean(rates['off']):.0%} | {np.mean(rates['on']):.0%} | "
                        f"{np.nanmean(nme) if not np.all(np.isnan(nme)) else float('nan'):.3f} | "
                        f"{np.nanmean(pck) if not np.all(np.isnan(pck)) else float('nan'):.2f} | "
                        f"{'; '.join(views)} | {np.mean(speed):.2f} |")
    body = (f"bench/bench_ward_phantom.py: {args.clips} seizure clips per condition, {args.seconds:g} s each, rendered "
            f"at {WARD_SIZE[0]}x{WARD_SIZE[1]} {FPS:g} fps by phantom/ward.py (ceiling-corner camera at the foot of a "
            "railed bed, wide lens, blanket to the chest; plain or striped pyjamas), H.264, de-identified as `site prepare` does (decoded to "
            "640x360 at 15 fps, pose stream). Pose = share of frames with a plausible pose; NME = mean keypoint error "
            "/ body size on those frames; PCK@0.1 = share of core landmarks within 10% of the body size.\n\n"
            + "\n".join(rows))
    print(body)
    if args.write:
        print("written to", write_section("ward-phantom", "The hard ward phantom (issue 15)", body))


if __name__ == "__main__":
    main()
