"""Keypoints of the de-identification pipeline on the real clips: detection, schema, rotation, determinism, ROI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiofed.client.deid import landmarks as lm
from semiofed.client.deid import rotation as rot
from semiofed.client.deid.manifest import parse_roi
from semiofed.client.deid.pipeline import Deidentifier, DeidentifyConfig
from semiofed.client.deid.video import read_frames
from semiofed.common.constants import LANDMARK_STREAMS
from semiofed.common.errors import ManifestError, SemiofedError
from semiofed.common.records import schema as rec

FPS = 15.0
Clip = tuple[np.ndarray, np.ndarray]  # frames [N, H, W, 3] uint8 RGB, times [N] seconds
# What a keypoints-only site computes: the three landmark streams, no STCNN.
KEYPOINTS_ONLY = DeidentifyConfig(streams=LANDMARK_STREAMS)


def decode(path: Path, n: int, fps: float = FPS) -> Clip:
    """The first n frames (RGB uint8) as the pipeline decodes them, and their times in seconds."""
    times, frames = read_frames(path, fps=fps)
    return frames[:n], times[:n]


def ms(times: np.ndarray) -> np.ndarray:
    """Seconds as the integer milliseconds a MediaPipe stream takes."""
    return np.round(times * 1000).astype(np.int64)


@pytest.fixture(scope="module")
def demo(videos_dir: Path) -> Clip:
    return decode(videos_dir / "mmaction2_demo.mp4", 60)


@pytest.fixture(scope="module")
def carphone(videos_dir: Path) -> Clip:
    return decode(videos_dir / "carphone_pristine.mp4", 45)


def check_schema(arrays: dict[str, np.ndarray], n: int) -> None:
    """Every key, shape and dtype of the record schema, and zeros wherever a mask is False."""
    expected = {
        rec.POSE: ((n, 33, 4), np.float32),
        rec.POSE_MASK: ((n,), np.bool_),
        rec.HANDS: ((n, 2, 21, 3), np.float32),
        rec.HANDS_MASK: ((n, 2), np.bool_),
        rec.FACE: ((n, lm.N_FACE, 3), np.float32),
        rec.FACE_MASK: ((n,), np.bool_),
        rec.FACE_BLENDSHAPES: ((n, 52), np.float32),
        rec.HEAD_POSE: ((n, 3), np.float32),
        rec.ROTATION: ((n,), np.int16),
    }
    for key, (shape, dtype) in expected.items():
        assert arrays[key].shape == shape, key
        assert arrays[key].dtype == dtype, key
        if dtype == np.float32:
            assert np.isfinite(arrays[key]).all(), key
    assert not arrays[rec.POSE][~arrays[rec.POSE_MASK]].any()
    assert not arrays[rec.HANDS][~arrays[rec.HANDS_MASK]].any()
    for key in (rec.FACE, rec.FACE_BLENDSHAPES, rec.HEAD_POSE):
        assert not arrays[key][~arrays[rec.FACE_MASK]].any()
    # Found landmarks are not all zero, and x, y are roughly inside the frame.
    for key, mask in ((rec.POSE, rec.POSE_MASK), (rec.HANDS, rec.HANDS_MASK), (rec.FACE, rec.FACE_MASK)):
        found = arrays[key][arrays[mask]]
        assert all(p.any() for p in found)
        if len(found):
            assert -0.5 < float(np.median(found[..., :2])) < 1.5


def test_demo_clip_finds_hands_and_pose_with_full_schema(model_dir: Path, demo: Clip) -> None:
    frames, times = demo
    with Deidentifier(KEYPOINTS_ONLY, model_dir) as deidentifier, deidentifier.open_video() as video:
        window = video.process_window(frames, times)
    arrays = window.arrays
    check_schema(arrays, len(frames))
    rates = lm.detection_rate(arrays)
    assert window.frames is frames  # upright clip, no ROI: no copy, no rotation
    assert window.features.shape == (len(frames) // 8, 0)  # no STCNN asked for
    assert (arrays[rec.ROTATION] == 0).all()
    assert rates["hands"] >= 0.8
    # The close-up arm wrestlers are the hard case, and borderline: 0.53 of the whole
    # clip with MediaPipe's default thresholds, 0.86 with ours (presence/tracking 0.3),
    # 0.93 on these 60 frames (0.47 if resampling picks the neighbouring frames).
    assert rates["pose"] >= 0.75
    assert set(rates) == {"pose", "hands", "face"}


def test_pose_finds_the_person_in_nearly_every_frame(model_dir: Path, videos_dir: Path) -> None:
    frames, times = decode(videos_dir / "mmaction2_test_video_structuralize.mp4", 45)
    with lm.PoseStream(model_dir) as stream:
        arrays = stream.process(frames, ms(times))
    assert lm.detection_rate(arrays)["pose"] >= 0.9
    visible = arrays[rec.POSE][arrays[rec.POSE_MASK]][..., 3]
    assert 0 <= visible.min() and visible.max() <= 1


def test_face_subset_blendshapes_and_head_pose_on_carphone(model_dir: Path, carphone: Clip) -> None:
    frames, times = carphone
    with lm.FaceStream(model_dir) as stream:
        arrays = stream.process(frames, ms(times))
    assert lm.detection_rate(arrays)["face"] >= 0.95
    assert arrays[rec.FACE].shape == (len(frames), lm.N_FACE, 3)
    assert 30 <= lm.N_FACE <= 60 and len(set(lm.FACE_INDICES)) == lm.N_FACE
    assert all(0 <= i < 478 for i in lm.FACE_INDICES)
    found = arrays[rec.FACE_MASK]
    face = arrays[rec.FACE][found]
    # Subject's right eye (33) is left of the subject's left eye (263) in this unmirrored frontal clip.
    right_eye, left_eye = lm.FACE_INDICES.index(33), lm.FACE_INDICES.index(263)
    assert (face[:, right_eye, 0] < face[:, left_eye, 0]).all()
    blend = arrays[rec.FACE_BLENDSHAPES][found]
    assert ((blend >= 0) & (blend <= 1)).all() and blend.sum(axis=1).min() > 0
    assert (np.abs(arrays[rec.HEAD_POSE][found]) < 45).all()  # a driver looking roughly at the camera


def test_head_roll_follows_a_quarter_turn_of_the_image(model_dir: Path, carphone: Clip) -> None:
    frames, stamps = carphone[0][:10], ms(carphone[1][:10])
    rolls = []
    for turned in (frames, np.rot90(frames, k=1, axes=(1, 2))):  # k=1: a quarter turn counter-clockwise
        with lm.FaceStream(model_dir) as stream:
            arrays = stream.process(np.ascontiguousarray(turned), stamps)
        assert arrays[rec.FACE_MASK].all()
        rolls.append(float(np.median(arrays[rec.HEAD_POSE][:, 2])))
    assert 70 < rolls[1] - rolls[0] < 110  # roll > 0 is counter-clockwise in the image


@pytest.mark.parametrize(("turn", "framed"), [(90, False), (270, True)])
def test_rotated_clip_is_turned_upright(model_dir: Path, carphone: Clip, turn: int, framed: bool) -> None:
    """A sideways camera's clip comes out upright; framed: inside a black border that the manifest's ROI removes."""
    frames, times = carphone[0][:30], carphone[1][:30]
    turned = rot.rotate(frames, turn)  # what a camera mounted sideways records
    roi = None
    if framed:  # the clip fills the middle half of a frame twice its size: roi (0.25, 0.25, 0.75, 0.75)
        n, height, width, _ = turned.shape
        border = np.zeros((n, 2 * height, 2 * width, 3), np.uint8)
        border[:, height // 2:height // 2 + height, width // 2:width // 2 + width] = turned
        turned, roi = border, (0.25, 0.25, 0.75, 0.75)
    with Deidentifier(DeidentifyConfig(streams=("pose", "face")), model_dir) as deidentifier:
        with deidentifier.open_video(roi=roi) as video:
            window = video.process_window(turned, times)
        with rot.PoseProbe(model_dir) as probe:
            assert rot.choose_rotation(rot.crop_roi(turned, roi), 0, probe) == (360 - turn) % 360
    arrays = window.arrays
    assert (arrays[rec.ROTATION] == (360 - turn) % 360).all()
    np.testing.assert_array_equal(window.frames, frames)
    check_schema(arrays, len(frames))
    rates = lm.detection_rate(arrays)
    assert rates["pose"] >= 0.8 and rates["face"] >= 0.8
    assert rates["hands"] == 0.0  # a disabled stream is all zeros and False


def test_empty_clip_finds_nothing_and_keeps_the_rotation(model_dir: Path) -> None:
    rng = np.random.default_rng(0)
    black = np.zeros((15, 144, 176, 3), np.uint8)
    noise = rng.integers(0, 256, size=(15, 144, 176, 3), dtype=np.uint8)
    times = np.arange(30) / FPS
    with Deidentifier(KEYPOINTS_ONLY, model_dir) as deidentifier, deidentifier.open_video(rotation=180) as video:
        parts = [video.process_window(black, times[:15]).arrays, video.process_window(noise, times[15:]).arrays]
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    check_schema(arrays, 30)
    assert (arrays[rec.ROTATION] == 180).all()
    assert not arrays[rec.POSE_MASK].any() and not arrays[rec.HANDS_MASK].any() and not arrays[rec.FACE_MASK].any()
    assert lm.detection_rate(arrays) == {"pose": 0.0, "hands": 0.0, "face": 0.0}


def test_same_frames_give_identical_arrays(model_dir: Path, demo: Clip) -> None:
    """Two videos through one Deidentifier (as `site prepare` runs): windows of 8, 8 and 4 frames, no state kept."""
    frames, times = demo[0][:20], demo[1][:20]
    config = DeidentifyConfig(snippet_frames=8, snippets_per_window=1, streams=LANDMARK_STREAMS)
    with Deidentifier(config, model_dir) as deidentifier:
        runs = [deidentifier.run_frames(zip(times, frames)) for _ in range(2)]
    assert runs[0].arrays.keys() == runs[1].arrays.keys() == set(rec.ARRAY_KEYS)
    for key in runs[0].arrays:
        np.testing.assert_array_equal(runs[0].arrays[key], runs[1].arrays[key], err_msg=key)
    assert len(runs[0].arrays[rec.POSE]) == 20
    # keypoints only: two snippets of 8 frames with times but no STCNN features, and no STCNN in the provenance
    assert runs[0].arrays[rec.SNIPPET_FEATURES].shape == (2, 0) and runs[0].stcnn == ""
    assert set(runs[0].models) == {"pose_landmarker_full", "hand_landmarker", "face_landmarker"}


@pytest.mark.parametrize(("streams", "why"), [(("hands", "face"), "'pose' is missing"), (("pose", "iris"), "unknown")])
def test_config_refuses_streams_it_cannot_compute(streams: tuple[str, ...], why: str) -> None:
    with pytest.raises(SemiofedError, match=why) as info:
        DeidentifyConfig(streams=streams)
    assert "Fix: use 'pose' and any of ['hands', 'face', 'stcnn']" in str(info.value)
    assert DeidentifyConfig(streams=("stcnn", "face", "pose")).streams == ("pose", "face", "stcnn")


def test_the_face_is_only_computed_when_a_site_asks_for_it() -> None:
    """Face landmarks are face geometry (biometric) and no model reads them: `site prepare` leaves them out."""
    assert DeidentifyConfig().streams == ("pose", "hands", "stcnn")
    assert DeidentifyConfig().landmark_streams == ("pose", "hands")


def test_stream_rejects_timestamps_that_do_not_increase(model_dir: Path, carphone: Clip) -> None:
    frames, stamps = carphone[0][:2], ms(carphone[1][:2])
    with lm.PoseStream(model_dir) as stream:
        stream.process(frames, stamps)
        with pytest.raises(ValueError, match="increase"):
            stream.process(frames, stamps)
        with pytest.raises(ValueError, match="uint8 RGB"):
            stream.process(frames.astype(np.float32), stamps + 1000)


@pytest.mark.parametrize(
    ("text", "roi"),
    [
        ("0;0;1;1", (0.0, 0.0, 1.0, 1.0)),
        (" 0.1; 0.2 ;0.9;1 ", (0.1, 0.2, 0.9, 1.0)),
        ("0.25;0;0.75;0.5", (0.25, 0.0, 0.75, 0.5)),
    ],
)
def test_parse_roi_accepts_fractions(text: str, roi: tuple[float, ...]) -> None:
    assert parse_roi(text) == roi


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "4"), ("0;0;1", "4"), ("0,0,1,1", "4"), ("0;0;1;1;1", "4"), ("a;0;1;1", "not a number"),
     ("0;0;1.5;1", "outside"), ("-0.1;0;1;1", "outside"), ("0;0;nan;1", "outside"), ("0.5;0;0.5;1", "empty"),
     ("0;0.8;1;0.2", "empty")],
)
def test_parse_roi_rejects_bad_text_with_a_fix(text: str, why: str) -> None:
    with pytest.raises(ManifestError, match=why) as info:
        parse_roi(text)
    assert "x0;y0;x1;y1" in str(info.value)


def test_crop_then_rotate_geometry() -> None:
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    crop = rot.crop_roi(frames, (0.5, 0.0, 1.0, 0.5))
    assert crop.shape == (2, 2, 3, 3) and np.shares_memory(crop, frames)
    np.testing.assert_array_equal(crop, frames[:, :2, 3:])
    turned = rot.rotate(crop, 90)
    assert turned.shape == (2, 3, 2, 3) and turned.flags.c_contiguous
    np.testing.assert_array_equal(turned[:, 0, -1], crop[:, 0, 0])  # clockwise: top-left goes top-right
    np.testing.assert_array_equal(rot.rotate(turned, 270), crop)
    np.testing.assert_array_equal(rot.rotate(crop, 180), crop[:, ::-1, ::-1])
    with pytest.raises(ValueError, match="multiple of 90"):
        rot.rotate(crop, 45)


class _CountingProbe:
    """A stand-in pose probe: finds a person lying down (never upright), counting its detections."""

    def __init__(self) -> None:
        self.calls = 0

    def probe(self, frame: np.ndarray) -> rot.ProbeResult:
        self.calls += 1
        return rot.ProbeResult(found=True, visibility=0.9, upright=0.0)


def test_rotation_search_pauses_after_a_search_that_kept_the_rotation() -> None:
    """A patient lying in bed is never upright: one search, then RETRY_WINDOWS windows without, then again."""
    probe = _CountingProbe()
    tracker = rot.RotationTracker(probe, samples=3)  # type: ignore[arg-type]
    frames = np.zeros((8, 32, 48, 3), np.uint8)
    searches = []
    for _ in range(2 * (rot.RotationTracker.RETRY_WINDOWS + 1)):
        before = probe.calls
        assert tracker.choose(frames) == 0
        searches.append(probe.calls > before)
    assert searches == ([True] + [False] * rot.RotationTracker.RETRY_WINDOWS) * 2
    assert probe.calls == 2 * 4 * 3  # each search tries 4 rotations on 3 frames
    assert rot.RotationTracker(None).choose(frames) == 0  # no probe: no search
    with pytest.raises(ValueError, match="rotation 45"):
        rot.RotationTracker(probe, rotation=45)  # type: ignore[arg-type]
