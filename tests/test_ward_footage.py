"""Ward footage: a small patient in a wide frame, dim infrared, a turned camera, poses that cannot be the patient.

The shared clips of real people are made into ward-like footage by the test
itself (pasted small into a wide dark room, turned to greyscale and
darkened, turned upside down), then run through the real de-identification.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from semiofed.client.deid import exposure as ex
from semiofed.client.deid import landmark_quality as lq
from semiofed.client.deid import patient_search as ps
from semiofed.client.deid.pipeline import Deidentifier, DeidentifyConfig
from semiofed.client.deid.prepare import no_skeleton_problem
from semiofed.client.deid.rotation import rotate
from semiofed.client.deid.video import read_frames
from semiofed.common.records import schema as rec

KEYPOINTS = DeidentifyConfig(streams=("pose", "hands"))
NO_SEARCH = DeidentifyConfig(streams=("pose", "hands"), enhance=False, find_patient=False)
CANVAS = (640, 360)  # width, height: what `site prepare` decodes a 1080p ward camera to
PASTE_AT = (0.62, 0.56)  # centre of the patient in the wide frame (fractions)


def _small_in_room(frame: np.ndarray, scale: float = 0.3) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The clip's frame shrunk to `scale` of the room's width and pasted off-centre into a dim room (and its box)."""
    width, height = CANVAS
    room = np.full((height, width, 3), 40, np.uint8)
    small = cv2.resize(frame, None, fx=scale * width / frame.shape[1], fy=scale * width / frame.shape[1],
                       interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    x0, y0 = int(width * PASTE_AT[0]) - w // 2, int(height * PASTE_AT[1]) - h // 2
    room[y0:y0 + h, x0:x0 + w] = small
    return room, (x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height)


def _night(frame: np.ndarray, seed: int) -> np.ndarray:
    """Near-infrared at night: greyscale, about a quarter of the light, sensor noise."""
    rng = np.random.default_rng(seed)
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) * 0.22 + 8 + rng.normal(0, 2.5, frame.shape[:2])
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def skeleton_clip(videos_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The full-body 1080p clip, decoded as `site prepare` decodes it."""
    times, frames = read_frames(videos_dir / "mmaction2_demo_skeleton.mp4", fps=15)
    return times, frames


def _run(config: DeidentifyConfig, times: np.ndarray, frames: np.ndarray, model_dir: Path, **kwargs):
    with Deidentifier(config, model_dir) as deidentifier:
        return deidentifier.run_frames(zip(times, frames), **kwargs)


# ---------------------------------------------------------------- on real footage


def test_a_small_patient_far_from_the_camera_is_found_and_mapped_back_to_the_frame(model_dir, skeleton_clip) -> None:
    times, frames = skeleton_clip
    pasted = [_small_in_room(f) for f in frames]
    room = np.stack([p[0] for p in pasted])
    x0, y0, x1, y1 = pasted[0][1]
    assert _run(NO_SEARCH, times, room, model_dir).detection_rate["pose"] < 0.1  # as configured before: nobody
    found = _run(KEYPOINTS, times, room, model_dir)
    assert found.detection_rate["pose"] >= 0.8
    region = found.capture["region"]
    assert region != [0.0, 0.0, 1.0, 1.0] and region[2] - region[0] < 0.5
    # the landmarks refer to the whole frame, so they lie on the pasted people (inside the region), not in its corner
    pose = found.arrays[rec.POSE][found.arrays[rec.POSE_MASK]]
    seen = pose[..., 3] > 0.5
    xs, ys = np.median(pose[..., 0][seen]), np.median(pose[..., 1][seen])
    assert x0 <= xs <= x1 and y0 <= ys <= y1
    assert region[0] <= xs <= region[2] and region[1] <= ys <= region[3]
    assert found.frame_size == CANVAS
    assert found.quality["pose"]["plausible"] == pytest.approx(found.detection_rate["pose"])


def test_dim_infrared_of_a_distant_patient_is_enhanced_or_cropped_until_the_pose_is_found(model_dir, skeleton_clip) -> None:
    times, frames = skeleton_clip
    night = np.stack([_night(_small_in_room(f)[0], i) for i, f in enumerate(frames)])
    before = _run(NO_SEARCH, times, night, model_dir).detection_rate["pose"]
    found = _run(KEYPOINTS, times, night, model_dir)
    assert before < 0.2 and found.detection_rate["pose"] >= 0.6, (before, found.detection_rate, found.capture)
    exposure = found.capture["exposure"]
    assert exposure["greyscale"] and exposure["mean"] < ex.DIM_MEAN  # measured, and kept in the provenance
    assert found.capture["region"] != [0.0, 0.0, 1.0, 1.0]


def test_an_upside_down_camera_is_turned_by_the_search(model_dir, skeleton_clip) -> None:
    times, frames = skeleton_clip
    turned = rotate(frames, 180)
    found = _run(KEYPOINTS, times, turned, model_dir)
    assert found.detection_rate["pose"] >= 0.8
    assert (found.arrays[rec.ROTATION] == 180).mean() >= 0.8


def test_a_well_lit_colour_clip_is_left_as_it_was(model_dir, videos_dir) -> None:
    """No enhancement, no region: ordinary footage gives the same arrays with the search as without it."""
    times, frames = read_frames(videos_dir / "carphone_pristine.mp4", fps=15)
    times, frames = times[:32], frames[:32]
    on, off = _run(KEYPOINTS, times, frames, model_dir), _run(NO_SEARCH, times, frames, model_dir)
    assert on.capture["enhancement"] == {"name": "none"} and on.capture["region"] == [0.0, 0.0, 1.0, 1.0]
    for key in rec.ARRAY_KEYS:
        np.testing.assert_array_equal(on.arrays[key], off.arrays[key], err_msg=key)


def test_a_room_without_anyone_keeps_its_stcnn_stream_but_a_keypoints_only_site_has_nothing(model_dir) -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(60, 70, size=(24, 120, 160, 3), dtype=np.uint8)  # a dim, empty, flat room
    times = np.arange(24) / 15.0
    keypoints_only = _run(KEYPOINTS, times, frames, model_dir)
    assert keypoints_only.detection_rate["pose"] == 0.0 and keypoints_only.capture["searches"] >= 1
    problem = no_skeleton_problem(keypoints_only, Path("room.mp4"))
    assert problem and "computes no STCNN features" in problem
    with_stcnn = _run(DeidentifyConfig(), times, frames, model_dir)
    assert no_skeleton_problem(with_stcnn, Path("room.mp4")) is None
    assert with_stcnn.arrays[rec.SNIPPET_FEATURES].shape == (3, 1024) and not with_stcnn.arrays[rec.POSE_MASK].any()


# ---------------------------------------------------------------- the parts, on real pixels and poses


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_landmarks_in_a_turned_region_map_to_the_same_pixel_of_the_turned_frame(degrees: int) -> None:
    height, width = 90, 160
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.int32)[None]  # each pixel holds its own (x, y)
    box = (0.25, 0.2, 0.75, 0.9)
    crop = rotate(ps.crop_box(frame, box), degrees)[0]
    whole = rotate(frame, degrees)[0]
    for v, u in ((3, 5), (crop.shape[0] - 4, crop.shape[1] // 2), (crop.shape[0] // 3, crop.shape[1] - 2)):
        point = np.array([[(u + 0.5) / crop.shape[1], (v + 0.5) / crop.shape[0], 0.0]])
        mapped = ps.map_points(point, ps.rotate_box(box, degrees))[0]
        col, row = int(mapped[0] * whole.shape[1]), int(mapped[1] * whole.shape[0])
        assert tuple(whole[row, col, :2]) == tuple(crop[v, u, :2])


def test_the_region_follows_a_patient_who_moves_to_its_edge_and_is_given_up_when_they_are_lost() -> None:
    tracker = ps.RegionTracker(aspect=16 / 9)
    region = ps.region_around((0.4, 0.4, 0.5, 0.6), 16 / 9)
    assert region[0] < 0.4 and region[2] > 0.5 and (region[2] - region[0]) >= ps.MIN_REGION * 9 / 16 - 1e-9
    inside = ((region[0] + region[2]) / 2 - 0.01, (region[1] + region[3]) / 2 - 0.01,
              (region[0] + region[2]) / 2 + 0.01, (region[1] + region[3]) / 2 + 0.01)
    assert tracker.update(region, inside) == (region, False)
    moved, again = tracker.update(region, (region[2] - 0.05, 0.45, min(region[2] + 0.1, 1.0), 0.55))
    assert not again and moved[2] > region[2] and moved[2] - moved[0] >= region[2] - region[0] - 1e-9
    assert tracker.moves == 1
    assert [tracker.update(moved, None)[1] for _ in range(ps.RegionTracker.LOST_WINDOWS)] == [False, False, True]


def test_a_pose_of_the_wrong_size_is_dropped_and_a_left_right_flip_repaired(model_dir, skeleton_clip) -> None:
    times, frames = skeleton_clip
    result = _run(NO_SEARCH, times[:24], frames[:24], model_dir)
    arrays = {rec.POSE: result.arrays[rec.POSE].copy(), rec.POSE_MASK: result.arrays[rec.POSE_MASK].copy()}
    assert arrays[rec.POSE_MASK].all()
    truth = arrays[rec.POSE].copy()
    centre = arrays[rec.POSE][5, :, :2].mean(axis=0)
    arrays[rec.POSE][5, :, :2] = centre + 3.0 * (arrays[rec.POSE][5, :, :2] - centre)  # a pose three times the size
    for left, right in lq.SIDE_PAIRS:  # frames 10 on: MediaPipe's sides exchanged
        arrays[rec.POSE][10:, [left, right]] = truth[10:, [right, left]]
    report = lq.clean_pose(arrays, *result.frame_size)
    assert report["dropped"] == 1 and not arrays[rec.POSE_MASK][5] and arrays[rec.POSE_MASK].sum() == 23
    assert not arrays[rec.POSE][5].any()
    assert report["flips_repaired"] == 14
    np.testing.assert_array_equal(arrays[rec.POSE][10:], truth[10:])
    few = {rec.POSE: truth[:4].copy(), rec.POSE_MASK: np.ones(4, bool)}
    few[rec.POSE][0, :, :2] *= 3
    assert lq.drop_implausible(few, *result.frame_size) == 0  # too few frames for a median: nothing judged


def test_the_enhancement_is_offered_to_dim_or_infrared_footage_only_and_is_the_same_on_every_frame(skeleton_clip) -> None:
    frames = skeleton_clip[1][:6]
    assert not ex.measure(frames).poor
    night = np.stack([_night(f, i) for i, f in enumerate(frames)])
    exposure = ex.measure(night)
    assert exposure.poor and exposure.greyscale and exposure.mean < 40
    contrast = ex.ContrastMap(exposure)
    enhanced = contrast(night)
    assert ex.measure(enhanced).contrast > 2 * exposure.contrast and ex.measure(enhanced).mean > exposure.mean + 30
    np.testing.assert_array_equal(contrast(night[:1]), enhanced[:1])  # a frame's result does not depend on the others
    assert night.dtype == enhanced.dtype and night.shape == enhanced.shape


def _ward_episode(*, ir_night: bool, clothing: str = "plain"):
    """One 4 s ward clip of phantom/ward.py (seed 300): its spec and simulated episode."""
    from dataclasses import replace as dc_replace

    from semiofed.phantom.body import sample_anthropometry
    from semiofed.phantom.episode import EpisodeSpec, simulate
    from semiofed.phantom.semiology import plan_seizure, sample_traits
    from semiofed.phantom.ward import ward_scene

    rng = np.random.default_rng([300, 15])
    body, traits = sample_anthropometry(rng), sample_traits(rng, 0.5)
    plan = plan_seizure(traits, "FOS", (4.0, 4.0), rng)
    scene = ward_scene("ward_supine", rng, ir_night=ir_night, clothing=clothing)
    spec = EpisodeSpec("P001", "P001-S1", body, traits, dc_replace(plan, video_s=4.0), scene, 30.0, 300)
    return spec, simulate(spec)


def test_the_hard_ward_phantom_hides_the_patient_until_the_search_finds_their_region(model_dir, tmp_path) -> None:
    """phantom/ward.py: a ceiling-corner camera at 1920x1080 over a railed bed, a blanket to the chest (daylight)."""
    from semiofed.phantom.encode import write_mp4
    from semiofed.phantom.render import Renderer
    from semiofed.phantom.ward import WARD_SIZE

    spec, episode = _ward_episode(ir_night=False)
    assert spec.size == WARD_SIZE
    uv = episode.joints_2d
    assert (uv[..., 0].max() - uv[..., 0].min()) < 0.35 * WARD_SIZE[0]  # the patient is small in the frame
    path = tmp_path / "ward.mp4"
    write_mp4(path, Renderer(episode).frames(), spec.fps, spec.size, spec.scene.crf)
    with Deidentifier(NO_SEARCH, model_dir) as plain, Deidentifier(KEYPOINTS, model_dir) as searching:
        before, after = plain.run(path), searching.run(path)
    assert before.detection_rate["pose"] < 0.5 and after.detection_rate["pose"] >= 0.8, (before.detection_rate, after.detection_rate)
    assert after.capture["region"] != [0.0, 0.0, 1.0, 1.0]


def test_striped_pyjamas_are_drawn_on_the_cloth_only_and_the_patient_is_still_found(model_dir, tmp_path) -> None:
    """The ward phantom's striped pyjamas: the same frame differs only where the sleeves are (the blanket covers the
    rest), an unknown pattern is refused, and the pattern does not hide the patient from the pipeline (daylight)."""
    from semiofed.phantom.encode import write_mp4
    from semiofed.phantom.render import Renderer
    from semiofed.phantom.ward import ward_scene

    with pytest.raises(ValueError, match="unknown clothing pattern"):
        ward_scene("ward_supine", np.random.default_rng(0), clothing="tartan")
    (_, plain), (spec, striped) = _ward_episode(ir_night=False), _ward_episode(ir_night=False, clothing="stripes")
    a, b = Renderer(plain).frame(30), Renderer(striped).frame(30)
    changed = np.argwhere(np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 8)
    assert len(changed) > 200  # the stripes are there
    uv = striped.joints_2d[30]
    from semiofed.phantom.body import JOINT_INDEX as JI
    arms = uv[[JI[n] for n in ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow")]]
    near = np.min(np.linalg.norm(changed[:, None, ::-1] - arms[None], axis=2), axis=1)
    assert np.quantile(near, 0.99) < 0.04 * spec.size[0]  # ... on the sleeves, nowhere else

    path = tmp_path / "striped.mp4"
    write_mp4(path, Renderer(striped).frames(), spec.fps, spec.size, spec.scene.crf)
    with Deidentifier(KEYPOINTS, model_dir) as searching:
        found = searching.run(path)
    assert found.detection_rate["pose"] >= 0.8, found.detection_rate
