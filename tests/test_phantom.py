"""Phantom seizure videos: deterministic bytes, manifests that `site prepare` reads, ground truth per video,
render speed, learnability, and MediaPipe detection of upright phantoms."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from semiofed.cli.phantom_cmd import app
from semiofed.client.deid.manifest import read_manifest
from semiofed.client.deid.video import read_frames
from semiofed.phantom.body import HAND_LANDMARK_JOINTS, JOINT_INDEX, JOINTS, POSE_LANDMARK_JOINTS, POSE_LANDMARKS, Skeleton
from semiofed.phantom.body import sample_anthropometry
from semiofed.phantom.dataset import GenerateConfig, PhantomError, plan_dataset
from semiofed.phantom.detect import keypoint_error, run_pose
from semiofed.phantom.encode import read_frames as read_bgr_frames
from semiofed.phantom.encode import write_mp4
from semiofed.phantom.episode import EpisodeSpec, simulate
from semiofed.phantom.learnability import cohort_features, grouped_cv
from semiofed.phantom.render import Renderer
from semiofed.phantom.scene import SiteStyle, sample_scene
from semiofed.phantom.semiology import plan_seizure, sample_traits

CLI = [sys.executable, "-m", "semiofed.cli"]
SMALL = ["--sites", "2", "--patients", "6", "--seizures-per-patient", "1", "--duration-s", "15-16"]


def _generate(out: Path, seed: int, workers: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "phantom", "generate", "--out", str(out), "--seed", str(seed), *SMALL, "--format", "json",
                           "--workers", str(workers)], capture_output=True, text=True)


def _digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("phantom")
    runs = {name: _generate(base / name, seed, workers) for name, seed, workers in (("a", 3, 1), ("b", 3, 2), ("c", 4, 1))}
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-2000:]
    return {"base": base, "runs": runs}


def test_same_seed_same_bytes_other_seed_other_patients(generated: dict) -> None:
    """b renders in 2 processes, a in one: the same seed gives the same bytes either way."""
    base = generated["base"]
    assert _digests(base / "a") == _digests(base / "b")
    videos_a = {k: v for k, v in _digests(base / "a").items() if k.endswith(".mp4")}
    videos_c = {k: v for k, v in _digests(base / "c").items() if k.endswith(".mp4")}
    assert videos_a and not set(videos_a.values()) & set(videos_c.values())


def test_manifests_are_valid_site_prepare_input(generated: dict) -> None:
    out = generated["base"] / "a"
    manifests = sorted(out.glob("*/manifest.csv"))
    assert len(manifests) == 2
    patients: list[set[str]] = []
    for manifest in manifests:
        rows, errors = read_manifest(manifest)
        assert errors == [] and rows
        patients.append({r.patient_id for r in rows})
        for row in rows:
            assert row.label in ("FOS", "TCS") and row.video.is_file()
            assert row.onset_s is not None and row.offset_s is not None and row.offset_s - row.onset_s >= 15 - 1e-6
            assert (row.generalization_s is not None) == (row.label == "TCS")
            if row.label == "TCS":
                assert row.onset_s < row.generalization_s < row.offset_s
    assert not patients[0] & patients[1]  # a patient belongs to one hospital


def test_each_video_decodes_and_has_ground_truth(generated: dict) -> None:
    out = generated["base"] / "a"
    for manifest in sorted(out.glob("*/manifest.csv")):
        for row in read_manifest(manifest)[0]:
            times, frames = read_frames(row.video)
            assert frames.shape[1:] == (240, 320, 3) and frames.std() > 5
            truth_json = row.video.parent.parent / "truth" / (row.video.stem + ".json")
            truth = json.loads(truth_json.read_text())
            assert truth["label"] == row.label and truth["fps"] == 15.0
            with np.load(truth_json.with_suffix(".npz"), allow_pickle=False) as npz:
                assert npz["joints_2d"].shape[0] == len(frames)
                assert npz["joints_3d"].shape[:2] == npz["joints_2d"].shape[:2]
                assert npz["pose_landmark_joints"].shape == (33,)


def test_refuses_to_overwrite_without_force(generated: dict) -> None:
    again = _generate(generated["base"] / "a", 3)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr


runner = CliRunner()


def _episode(kind: str, seed: int, seconds: float, label: str = "TCS", ir: float = 0.0):
    rng = np.random.default_rng(seed)
    body, traits = sample_anthropometry(rng), sample_traits(rng, 0.5)
    plan = plan_seizure(traits, label, (seconds, seconds), rng)
    style = SiteStyle({kind: 1.0}, ir, (1.0, 2.0), (23, 23), 1.0, 0.0, 0.0, 0.0)
    scene = sample_scene(kind, style, (320, 240), plan.video_s, rng)
    return EpisodeSpec("P001", "P001-S1", body, traits, plan, scene, 15.0, seed)


def test_joints_follow_mediapipe_order_and_bones_keep_their_length():
    assert JOINTS[:33] == POSE_LANDMARKS and POSE_LANDMARK_JOINTS == tuple(range(33))
    for side in ("left", "right"):
        hand = HAND_LANDMARK_JOINTS[side]
        assert len(set(hand)) == 21 and hand[0] == JOINT_INDEX[f"{side}_wrist"]
    episode = simulate(_episode("bed_side", 0, 20.0))
    forearm = np.linalg.norm(episode.joints_3d[:, JOINT_INDEX["left_elbow"]] - episode.joints_3d[:, JOINT_INDEX["left_wrist"]], axis=1)
    assert np.ptp(forearm) < 1e-9
    skeleton = Skeleton(episode.spec.anthropometry)
    assert np.isclose(forearm[0], np.linalg.norm(skeleton.offset[JOINT_INDEX["left_wrist"]]))


def test_a_sixty_second_clip_renders_every_frame(tmp_path: Path):
    # render speed is a benchmark figure (bench/bench_phantom.py -> docs/benchmarks.md), not a timed test
    spec = _episode("bed_side", 1, 40.0)
    spec = replace(spec, plan=replace(spec.plan, video_s=60.0))
    count = write_mp4(tmp_path / "clip.mp4", Renderer(simulate(spec)).frames(), 15.0, (320, 240), 23)
    assert count == 900
    assert sum(1 for _ in read_bgr_frames(tmp_path / "clip.mp4")) == 900


def test_classes_learnable_from_motion_but_not_from_duration():
    _, videos = plan_dataset(GenerateConfig(sites=3, patients=36, seizures_per_patient=(1, 3), seed=11, duration_s=(15, 60)))
    x, duration, y, groups = cohort_features(videos, np.random.default_rng(0))
    assert 0.3 < y.mean() < 0.7
    motion = grouped_cv(x, y, groups).balanced_accuracy
    by_duration = grouped_cv(duration, y, groups).balanced_accuracy
    assert motion >= 0.75, motion
    assert by_duration <= 0.65, by_duration


@pytest.mark.parametrize("kind", ["chair", "bed_sitting"])
def test_mediapipe_finds_upright_phantoms(kind: str, model_dir: Path, tmp_path: Path):
    episode = simulate(_episode(kind, 21, 12.0))
    frames = list(Renderer(episode).frames())[::6][:40]
    write_mp4(tmp_path / "clip.mp4", frames, 2.5, (320, 240), 23)
    result = run_pose(read_bgr_frames(tmp_path / "clip.mp4"), 2.5, model_dir, video_mode=False)
    assert result.detection_rate >= 0.9
    error = keypoint_error(result, episode.joints_2d[::6][:40])
    assert error["nme"] < 0.1 and error["nme"] < error["nme_swapped"]


def test_short_videos_and_even_sites_for_the_demo():
    """lead/tail bound the video around the seizure; every site gets at least min_patients_per_site patients."""
    config = GenerateConfig(sites=3, patients=12, min_patients_per_site=4, seizures_per_patient=(1, 1), seed=3,
                            duration_s=(10, 10.5), lead_s=(1.5, 2.5), tail_s=(1.5, 2.5))
    _, videos = plan_dataset(config)
    per_site = {site: len({v.spec.patient_id for v in videos if v.site == site}) for site in {v.site for v in videos}}
    assert per_site == {"site_01": 4, "site_02": 4, "site_03": 4}
    for v in videos:
        plan = v.spec.plan
        assert 1.5 <= plan.onset_s <= 2.5 and 1.5 <= plan.video_s - plan.offset_s <= 2.5 + 1e-6
        assert v.spec.num_frames == round(plan.video_s * 15)
    # the defaults keep the long lead and tail (and so the bytes of earlier datasets)
    _, default = plan_dataset(GenerateConfig(sites=3, patients=12, seizures_per_patient=(1, 1), seed=3))
    assert max(v.spec.plan.onset_s for v in default) > 2.5


def test_bad_settings_say_what_to_do(tmp_path: Path):
    with pytest.raises(PhantomError, match="at least 1 patient"):
        plan_dataset(GenerateConfig(sites=3, patients=2))
    with pytest.raises(PhantomError, match="at least 4 patient"):
        plan_dataset(GenerateConfig(sites=3, patients=11, min_patients_per_site=4))
    with pytest.raises(PhantomError, match="--duration-s"):
        plan_dataset(GenerateConfig(duration_s=(5, 8)))
    with pytest.raises(PhantomError, match="lead 4-2 s"):
        plan_dataset(GenerateConfig(lead_s=(4, 2)))
    result = runner.invoke(app, ["generate", "--out", str(tmp_path), "--size", "big"], env={"SEMIOFED_PROGRESS": "off"})
    assert result.exit_code != 0 and "320x240" in str(result.exception)


def test_the_manifest_gives_the_side_of_one_sided_limb_signs_only():
    from semiofed.client.deid.manifest import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
    from semiofed.phantom.dataset import MANIFEST_HEADER, GenerateConfig, manifest_row, plan_dataset
    from semiofed.phantom.semiology import FOS, TCS, Phase, SeizurePlan

    def plan(*phases: Phase, label: str = FOS) -> SeizurePlan:
        return SeizurePlan(label, 20.0, 2.0, 15.0, 8.0 if label == TCS else None, phases)

    assert plan(Phase("clonic_arm", 2, 9, "left"), Phase("arrest", 2, 5, "right")).limb_side == "left"
    assert plan(Phase("hemiclonic", 2, 8, "right"), label=TCS).limb_side == "right"  # the onset side of a TCS
    assert plan(Phase("clonic_arm", 2, 9, "left"), Phase("dystonic_hand", 2, 9, "right")).limb_side is None
    assert plan(Phase("head_version", 2, 9, "left"), Phase("oral_automatism", 2, 9, "left")).limb_side is None
    assert set(MANIFEST_HEADER) == set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)  # what the phantom writes, prepare reads
    rows = [manifest_row(v) for videos in plan_dataset(GenerateConfig(sites=1, patients=12, seed=3))[1:] for v in videos]
    assert {r["side"] for r in rows} <= {"", "left", "right"} and any(r["side"] for r in rows)
