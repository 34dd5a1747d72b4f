"""Write frames to mp4 with deterministic encoder settings (same frames, same bytes)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np


def video_codec() -> str:
    """The codec used: H.264 (libx264) when PyAV has it, else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int], crf: int = 23) -> int:
    """Encode BGR frames to `path`; return the number of frames written.

    One encoder thread, fixed options, x264's macroblock tree off and the
    muxer's bitexact flag make the output a pure function of the frames (no
    wall-clock timestamps, no thread races).
    """
    width, height = size
    codec = video_codec()
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if codec == "libx264":
            # mbtree off: with it, x264 (core 165) gives other bytes for the same frames now and then, even
            # single-threaded (measured: 1 run in 3 differs); without it 15 of 15 runs agree
            stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        else:
            stream.options = {"qscale": str(max(2, min(31, crf // 4))), "threads": "1"}
            stream.codec_context.qscale = max(2, min(31, crf // 4))
        for bgr in frames:
            frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
            frame.pts = count
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return count


def read_frames(path: Path) -> Iterable[np.ndarray]:
    """Decode a video into BGR frames (for measures on the encoded footage)."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")
