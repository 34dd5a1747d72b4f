"""Ward-like footage made from the shared clips of real people: pose found with and without the patient search.

Each shared clip is looped to --seconds, put into a 1920x1080 frame at 30 fps
(a ward camera's format) under one condition, written as H.264, and run
through `site prepare`'s de-identification (decoded to 640x360):

- daylight: the clip filling the frame, as recorded;
- IR night: greyscale, about a fifth of the light, sensor noise;
- IR washed out: greyscale, a third of the contrast around mid-grey;
- distant: the clip at 30% of the frame's width, off-centre in a dim room (a ceiling-corner camera);
- distant IR night: both;
- distant, upside down: the distant frame turned 180 degrees.

"search off" is the pipeline as configured before the patient search (no
enhancement, whole frame); "search on" is `site prepare` now, with every
stream (pose, hands, I3D), whose wall time gives the multiple of real time.

Usage: python bench/bench_ward_footage.py [--seconds 8] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from semiofed.client.deid.pipeline import Deidentifier, DeidentifyConfig  # noqa: E402
from semiofed.client.deid.rotation import rotate  # noqa: E402
from semiofed.client.deid.video import read_frames  # noqa: E402

SHARED = Path(os.environ.get("SEMIOFED_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CLIPS = ("mmaction2_demo_skeleton.mp4", "mmaction2_demo.mp4", "mmaction2_test_video_structuralize.mp4")
SIZE = (1920, 1080)
FPS = 30


def _fill(frame: np.ndarray) -> np.ndarray:
    width, height = SIZE
    scale = min(width / frame.shape[1], height / frame.shape[0])
    big = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    out = np.zeros((height, width, 3), np.uint8)
    y0, x0 = (height - big.shape[0]) // 2, (width - big.shape[1]) // 2
    out[y0:y0 + big.shape[0], x0:x0 + big.shape[1]] = big
    return out


def _distant(frame: np.ndarray) -> np.ndarray:
    width, height = SIZE
    room = np.full((height, width, 3), 40, np.uint8)
    scale = 0.3 * width / frame.shape[1]
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    x0, y0 = int(width * 0.62) - w // 2, int(height * 0.56) - h // 2
    room[y0:y0 + h, x0:x0 + w] = small
    return room


def _grey(frame: np.ndarray, gain: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) * gain + offset
    grey += rng.normal(0, 2.5, grey.shape)
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


CONDITIONS = {
    "daylight": lambda f, rng: _fill(f),
    "IR night": lambda f, rng: _grey(_fill(f), 0.22, 8, rng),
    "IR washed out": lambda f, rng: _grey(_fill(f), 0.3, 90, rng),
    "distant": lambda f, rng: _distant(f),
    "distant IR night": lambda f, rng: _grey(_distant(f), 0.22, 8, rng),
    "distant, upside down": lambda f, rng: rotate(_distant(f)[None], 180)[0],
}


def write_condition(source: Path, condition: str, seconds: float, target: Path) -> Path:
    """The source clip looped to `seconds`, under a condition, as 1080p 30 fps H.264."""
    _, frames = read_frames(source, fps=FPS, max_side=None)
    rng = np.random.default_rng(0)
    make = CONDITIONS[condition]
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for i in range(int(seconds * FPS)):
            frame = make(frames[i % len(frames)], rng)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    off = DeidentifyConfig(streams=("pose",), enhance=False, find_patient=False)
    rows = ["| clip | condition | pose, search off | pose, search on | enhancement | region | thresholds | x real time |",
            "| --- | --- | ---: | ---: | --- | --- | --- | ---: |"]
    totals: dict[str, list[float]] = {"off": [], "on": [], "rt": []}
    with tempfile.TemporaryDirectory() as tmp, Deidentifier(off) as plain, Deidentifier(DeidentifyConfig()) as full:
        for name in CLIPS:
            for condition in CONDITIONS:
                clip = write_condition(SHARED / "videos" / name, condition, args.seconds, Path(tmp) / "clip.mp4")
                before = plain.run(clip).detection_rate["pose"]
                start = time.perf_counter()
                after = full.run(clip)
                wall = time.perf_counter() - start
                capture = after.capture
                region = "whole" if capture["region"] == [0.0, 0.0, 1.0, 1.0] else \
                    f"{capture['region'][2] - capture['region'][0]:.0%} x {capture['region'][3] - capture['region'][1]:.0%}"
                rows.append(f"| {name} | {condition} | {before:.0%} | {after.detection_rate['pose']:.0%} | "
                            f"{capture['enhancement']['name']} | {region} | {capture['thresholds']} | "
                            f"{args.seconds / wall:.2f} |")
                totals["off"].append(before)
                totals["on"].append(after.detection_rate["pose"])
                totals["rt"].append(args.seconds / wall)
                print(rows[-1], file=sys.stderr, flush=True)
    rows.append(f"| **mean** | | **{np.mean(totals['off']):.0%}** | **{np.mean(totals['on']):.0%}** | | | | "
                f"**{np.mean(totals['rt']):.2f}** |")
    body = (f"Each shared clip of real people looped to {args.seconds:g} s, made into 1920x1080 {FPS} fps H.264 "
            "under each condition by bench/bench_ward_footage.py, then de-identified as `site prepare` does "
            "(decoded to 640x360 at 15 fps). Pose = share of frames with a plausible pose. Search off: no "
            "enhancement, whole frame, pose only. Search on: `site prepare` now, every default stream (pose, "
            "hands, I3D); x real time = seconds of video per second of its wall time. The real ward footage of "
            "issue 15 is held back for acceptance and is not in this table.\n\n" + "\n".join(rows))
    print(body)
    if args.write:
        print("written to", write_section("ward-footage", "Ward-like footage: the patient search (issue 15)", body))


if __name__ == "__main__":
    main()
