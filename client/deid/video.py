"""Video decoding with PyAV: probe, then frames resampled to a fixed rate as RGB arrays."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from semiofed.common.errors import VideoError

log = logging.getLogger(__name__)

# Frames are downscaled so the longer side is at most this many pixels:
# MediaPipe and the STCNN work at <= 256 px internally, and a 1080p frame at
# full size costs 6 MB and most of the decode time.
DEFAULT_MAX_SIDE = 640
# A decode that stops this far short of the declared duration is a truncated file.
TRUNCATION_TOLERANCE = 0.9


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its video stream."""

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoError(f"video {path} does not exist", "check the path in the manifest and --video-root")
    if not path.is_file():
        raise VideoError(f"video {path} is not a file", "point the manifest at a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"video {path} is empty (0 bytes)", "copy the video again from the source system")
    try:
        container = av.open(str(path), mode="r")
    except av.error.InvalidDataError as exc:
        raise VideoError(f"video {path} is not a readable video file ({exc.strerror or exc})",
                         "re-export it as MP4 (H.264) or AVI") from exc
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"video {path} cannot be opened ({exc})", "re-export it as MP4 (H.264)") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream", "use a file that contains video")
    return container


def probe(path: Path) -> VideoInfo:
    """Read a video's duration, frame rate, size and codec without decoding it."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        # AVI headers keep the frame count of the whole file even when the
        # index says less: a truncated AVI shows up as a shortfall here.
        if stream.frames and fps:
            duration = max(duration, stream.frames / fps)
        codec = _codec_name(stream)
        if not codec:
            raise VideoError(f"video {path} uses a codec this FFmpeg cannot decode", "re-export it as MP4 (H.264)")
        return VideoInfo(duration_s=duration, fps=fps, width=stream.width, height=stream.height, codec=codec)


def _codec_name(stream: av.video.stream.VideoStream) -> str | None:
    """The stream's decoder name, or None where FFmpeg has no decoder for it (PyAV then has no codec context)."""
    try:
        return stream.codec_context.name or None
    except Exception:  # noqa: BLE001 - PyAV raises various errors for unknown codecs
        return None


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    # even sizes keep swscale's chroma handling exact
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def iter_frames(
    path: Path,
    *,
    fps: float = 15.0,
    max_side: int | None = DEFAULT_MAX_SIDE,
    check_truncation: bool = True,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time_s, RGB uint8 [H, W, 3]) at a fixed `fps`, taking the latest source frame at each tick.

    Time is relative to the first decoded frame (no wall-clock time survives).
    Raises VideoError for unreadable, undecodable or truncated files.
    """
    path = Path(path)
    if fps <= 0:
        raise VideoError(f"frame rate {fps} is not positive", "use e.g. --fps 15")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = probe(path).duration_s  # also refuses a codec this FFmpeg cannot decode
        width, height = _scaled_size(stream.width, stream.height, max_side)
        step = 1.0 / fps
        next_tick, index = 0.0, 0
        start: float | None = None
        last_time = 0.0
        pending: tuple[float, av.VideoFrame] | None = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                t = float(Fraction(frame.pts) * frame.time_base)
                if start is None:
                    start = t
                t -= start
                last_time = t
                # emit every tick whose time has been reached, using the latest frame at or before it
                while pending is not None and t > next_tick + 1e-9:
                    yield index * step, pending[1].to_ndarray(format="rgb24", width=width, height=height)
                    index += 1
                    next_tick = index * step
                pending = (t, frame)
        except av.error.FFmpegError as exc:
            raise VideoError(f"video {path} is corrupt or truncated at {last_time:.1f} s ({exc})",
                             "re-export or copy the video again") from exc
        if pending is None:
            raise VideoError(f"video {path} has no decodable frames", "re-export it as MP4 (H.264)")
        frame_period = 1.0 / (float(stream.average_rate) if stream.average_rate else fps)
        end = last_time + frame_period
        while next_tick < end - 1e-9:
            yield index * step, pending[1].to_ndarray(format="rgb24", width=width, height=height)
            index += 1
            next_tick = index * step
        if check_truncation and declared > 1.0 and end < TRUNCATION_TOLERANCE * declared:
            raise VideoError(
                f"video {path} is truncated: frames stop at {end:.1f} s of a declared {declared:.1f} s",
                "copy the complete file again",
            )
    finally:
        container.close()


def read_frames(path: Path, *, fps: float = 15.0, max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole video: (times_s [T] float32, frames [T, H, W, 3] uint8)."""
    times, frames = [], []
    for t, frame in iter_frames(path, fps=fps, max_side=max_side):
        times.append(t)
        frames.append(frame)
    return np.asarray(times, dtype=np.float32), np.stack(frames)
