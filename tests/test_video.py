"""Decoding real clips at 15 fps, and clear errors for broken files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from semiofed.client.deid.video import probe, read_frames
from semiofed.common.errors import VideoError

# clip: (duration in s, size (w, h) as decoded; 1080p is scaled to 640 wide)
CLIPS = {
    "carphone_pristine.mp4": (4.0, (176, 144)),
    "mmaction2_demo.mp4": (10.0, (340, 256)),
    "mmaction2_demo_skeleton.mp4": (2.57, (640, 360)),
    "mmaction2_test_video_structuralize.mp4": (10.0, (426, 240)),
    "mmaction2_tests_test.avi": (6.56, (320, 240)),
}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_real_clip_resampled_to_15_fps(videos_dir: Path, name: str) -> None:
    duration, (width, height) = CLIPS[name]
    times, frames = read_frames(videos_dir / name, fps=15.0)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (height, width, 3)
    assert abs(len(frames) - duration * 15) <= 2
    assert np.allclose(np.diff(times), 1 / 15, atol=1e-6) and times[0] == 0.0
    assert frames.std() > 10  # real picture content, not blank frames


def test_decoding_is_deterministic(videos_dir: Path) -> None:
    a = read_frames(videos_dir / "mmaction2_tests_test.avi")[1]
    b = read_frames(videos_dir / "mmaction2_tests_test.avi")[1]
    assert np.array_equal(a, b)


def test_probe_reads_container_facts(videos_dir: Path) -> None:
    info = probe(videos_dir / "mmaction2_demo.mp4")
    assert info.codec == "h264" and (info.width, info.height) == (340, 256)
    assert abs(info.fps - 28.0) < 0.1 and abs(info.duration_s - 10.0) < 0.1


def _faststart_copy(source: Path, target: Path) -> None:
    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def _bad_files(videos_dir: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    demo = (videos_dir / "mmaction2_demo.mp4").read_bytes()
    avi = (videos_dir / "mmaction2_tests_test.avi").read_bytes()
    (tmp / "zero.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("this is not a video\n")
    (tmp / "cut_moov.mp4").write_bytes(demo[: len(demo) // 2])
    (tmp / "cut.avi").write_bytes(avi[: len(avi) // 2])
    _faststart_copy(videos_dir / "mmaction2_demo.mp4", tmp / "fast.mp4")
    fast = (tmp / "fast.mp4").read_bytes()
    (tmp / "cut_faststart.mp4").write_bytes(fast[: len(fast) // 2])
    (tmp / "codec.mp4").write_bytes(demo.replace(b"avc1", b"zzz1"))
    return {
        "zero": (tmp / "zero.mp4", "empty"),
        "text": (tmp / "text.mp4", "not a readable video"),
        "truncated mp4 without index": (tmp / "cut_moov.mp4", "not a readable video"),
        "truncated avi": (tmp / "cut.avi", "truncated"),
        "truncated faststart mp4": (tmp / "cut_faststart.mp4", "truncated"),
        "unknown codec": (tmp / "codec.mp4", "codec"),
        "missing": (tmp / "nope.mp4", "does not exist"),
        "directory": (tmp, "not a file"),
    }


def test_bad_files_give_one_clear_error(videos_dir: Path, tmp_path: Path) -> None:
    for case, (path, expected) in _bad_files(videos_dir, tmp_path).items():
        with pytest.raises(VideoError) as info:
            read_frames(path)
        message = str(info.value)
        assert expected in message, case
        assert "Fix:" in message and "\n" not in message, case
