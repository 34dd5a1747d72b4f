"""Prediction on one record: calibrated probabilities, timeline PNG, and the `predict` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from dp_synthetic import make_record
from semiofed.client.training.predict import estimate_generalisation, predict_record, write_timeline_png
from semiofed.common.learning.checkpoint import load_checkpoint, save_checkpoint
from semiofed.common.learning.classifier import ClassifierConfig, build_classifier
from semiofed.common.records.features import feature_extractor_of


def _ckpt(tmp_path, record):
    model = build_classifier(ClassifierConfig(stcnn_dim=32, embed_dim=8, hidden=6, temporal="blstm"), seed=0)
    return save_checkpoint(tmp_path / "ckpt", model, {"feature_extractor": feature_extractor_of(record), "temperature": 2.0})


def test_predict_record_gives_calibrated_probabilities_and_a_png(tmp_path):
    record = make_record(np.random.default_rng(0), patient="a", index=0, label="TCS", n_snippets=40)
    prediction = predict_record(load_checkpoint(_ckpt(tmp_path, record)), record)
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-6 and prediction.temperature == 2.0
    assert prediction.snippet_probabilities.shape == (40, 2)
    png = write_timeline_png(prediction, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generalisation_is_the_first_sustained_crossing():
    times = np.arange(10.0)
    p = np.array([0.1, 0.6, 0.2, 0.3, 0.7, 0.8, 0.9, 0.9, 0.2, 0.9])
    assert estimate_generalisation(times, p) == 4.0
    assert estimate_generalisation(times, np.zeros(10)) is None


def _real_i3d_ckpt(tmp_path, model_dir, sha=None):
    from semiofed.common.models.registry import file_sha256

    model = build_classifier(ClassifierConfig(streams=("stcnn", "keypoints"), stcnn_dim=1024, embed_dim=8, hidden=6,
                                              temporal="blstm"), seed=0)
    extractor = {"name": "i3d", "sha256": sha or file_sha256("i3d_kinetics400_rgb", model_dir), "dim": 1024}
    return save_checkpoint(tmp_path / "ckpt", model, {"feature_extractor": extractor, "temperature": 1.5})


def test_predict_command_on_a_real_video(tmp_path, model_dir, videos_dir):
    """The real in-memory de-identification (MediaPipe + I3D) feeds the classifier; nothing is written but the PNG
    and the page."""
    ckpt = _real_i3d_ckpt(tmp_path, model_dir)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "semiofed.cli", "predict", str(videos_dir / "carphone_pristine.mp4"),
                           "--model", str(ckpt), "--out", str(out), "--format", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["predicted"] in ("FOS", "TCS") and abs(sum(report["probabilities"].values()) - 1) < 1e-6
    assert sorted(p.name for p in out.iterdir()) == ["carphone_pristine_assessment.html", "carphone_pristine_timeline.png"]
    assert (out / "carphone_pristine_timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_refuses_a_model_of_other_stcnn_weights(tmp_path, model_dir, videos_dir):
    ckpt = _real_i3d_ckpt(tmp_path, model_dir, sha="0" * 64)
    done = subprocess.run([sys.executable, "-m", "semiofed.cli", "predict", str(videos_dir / "carphone_pristine.mp4"),
                           "--model", str(ckpt), "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Fix:" in done.stderr
