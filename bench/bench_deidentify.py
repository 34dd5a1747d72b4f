"""Throughput of de-identification on a 60 s clip: each stage alone, then the concurrent pipeline.

Usage: python bench/bench_deidentify.py [--seconds 60] [--clip PATH] [--write]
The clip is a shared real video looped to the wanted length. Figures are
multiples of real time (x RT: seconds of video processed per second of wall
time; >= 1.0 keeps up with a camera).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from semiofed.client.deid import landmarks  # noqa: E402
from semiofed.client.deid.pipeline import Deidentifier, DeidentifyConfig  # noqa: E402
from semiofed.client.deid.video import read_frames  # noqa: E402
from semiofed.common.models.stcnn import load_stcnn  # noqa: E402

SHARED = Path(os.environ.get("SEMIOFED_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def looped_clip(source: Path, seconds: float, target: Path, fps: int = 15) -> Path:
    """Write `source` looped to `seconds` at `fps` as H.264 (or MPEG-4 if x264 is missing)."""
    _, frames = read_frames(source, fps=fps)
    n = int(seconds * fps)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(target), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clip", type=Path, default=SHARED / "videos" / "mmaction2_demo.mp4")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    config = DeidentifyConfig()
    with tempfile.TemporaryDirectory() as tmp:
        clip = looped_clip(args.clip, args.seconds, Path(tmp) / "clip.mp4")
        stage: dict[str, float] = {}
        stage["decode"] = timed(lambda: read_frames(clip, fps=config.fps))
        times, frames = read_frames(clip, fps=config.fps)
        stamps = np.round(times * 1000).astype(np.int64)
        w = config.window_frames
        windows = [(frames[i:i + w], stamps[i:i + w]) for i in range(0, len(frames), w)]
        for name, cls in landmarks.STREAM_CLASSES.items():
            with cls() as stream:
                stage[name] = timed(lambda s=stream: [s.process(f, t) for f, t in windows])
        encoder = load_stcnn(config.stcnn)
        whole = (len(frames) // config.snippet_frames) * config.snippet_frames
        clips = frames[:whole].reshape(-1, config.snippet_frames, *frames.shape[1:])
        stage["stcnn"] = timed(lambda: [encoder.encode(clips[i:i + config.snippets_per_window])
                                        for i in range(0, len(clips), config.snippets_per_window)])
        with Deidentifier(config) as deidentifier:
            deidentifier.run(clip)  # warm-up: first-call costs (XNNPACK packing, allocator)
            end_to_end = timed(lambda: deidentifier.run(clip))
    seconds = len(frames) / config.fps
    rows = ["| stage | wall s | ms per frame | x real time |", "| --- | ---: | ---: | ---: |"]
    for name, wall in stage.items():
        rows.append(f"| {name} alone | {wall:.1f} | {1000 * wall / len(frames):.1f} | {seconds / wall:.2f} |")
    total = sum(stage.values())
    rows.append(f"| sum of stages (sequential) | {total:.1f} | {1000 * total / len(frames):.1f} | {seconds / total:.2f} |")
    rows.append(f"| **end to end, stages concurrent** | {end_to_end:.1f} | {1000 * end_to_end / len(frames):.1f} "
                f"| **{seconds / end_to_end:.2f}** |")
    body = (f"{seconds:.0f} s clip ({args.clip.name} looped, {frames.shape[2]}x{frames.shape[1]}, "
            f"{len(frames)} frames at {config.fps:g} fps), I3D snippets of {config.snippet_frames} frames, "
            f"all streams on. Target: >= 1.0x real time end to end.\n\n" + "\n".join(rows))
    print(body)
    if args.write:
        print("written to", write_section("deidentify", "De-identification throughput (site prepare)", body))


if __name__ == "__main__":
    main()
