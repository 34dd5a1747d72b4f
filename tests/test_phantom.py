"""Phantom seizure videos: deterministic bytes, manifests that `site prepare` reads, ground truth per video."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semiofed.client.manifest import read_manifest
from semiofed.client.video import read_frames

CLI = [sys.executable, "-m", "semiofed.cli"]
SMALL = ["--sites", "2", "--patients", "6", "--seizures-per-patient", "1", "--duration-s", "15-16"]


def _generate(out: Path, seed: int) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "phantom", "generate", "--out", str(out), "--seed", str(seed), *SMALL, "--format", "json"],
                          capture_output=True, text=True)


def _digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("phantom")
    runs = {name: _generate(base / name, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-2000:]
    return {"base": base, "runs": runs}


def test_same_seed_same_bytes_other_seed_other_patients(generated: dict) -> None:
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
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
