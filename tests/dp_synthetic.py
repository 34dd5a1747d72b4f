"""Synthetic seizure records in the real schema, with a learnable class signal (tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semiofed.common.records import schema as R
from semiofed.common.records.schema import SeizureRecord, write_record

FAKE_I3D_SHA = "a5b185914226a2ad4d5de1a2c9f9974f1c661039daa651c8aa28986144e3141b"


def make_record(
    rng: np.random.Generator, *, patient: str, index: int, label: str, n_snippets: int = 20, dim: int = 32,
    signal: float = 1.0, fps: float = 15.0, stcnn: str = "i3d", sha: str = FAKE_I3D_SHA, stcnn_input: str = "",
) -> SeizureRecord:
    """One record: TCS snippets drift in STCNN space and shake the limbs harder over time."""
    snippet_frames = 8
    n_frames = n_snippets * snippet_frames
    times = np.arange(n_frames, dtype=np.float32) / fps
    tcs = label == "TCS"
    direction = np.random.default_rng(7).normal(size=dim).astype(np.float32)  # shared class direction
    ramp = np.linspace(0, 1, n_snippets, dtype=np.float32)[:, None]
    feats = np.abs(rng.normal(0.5, 0.3, size=(n_snippets, dim))).astype(np.float32)
    if tcs:
        feats += signal * ramp * direction * 0.5
    pose = np.zeros((n_frames, 33, 4), np.float32)
    pose[:, :, 0] = 0.5 + rng.normal(0, 0.1, 33)
    pose[:, :, 1] = 0.5 + np.linspace(-0.3, 0.3, 33)
    pose[:, :, 3] = 1.0
    amp = (0.04 if tcs else 0.01) * signal * np.linspace(0.2, 1, n_frames)[:, None]
    pose[:, :, 0] += amp * np.sin(2 * np.pi * 3 * times)[:, None] + rng.normal(0, 0.003, (n_frames, 33))
    # Limbs jerk at 3 Hz relative to the torso: both sides in phase for TCS, one side for FOS (as the motion
    # descriptors see a seizure; the whole-body sway above is camera-like and drops out of them).
    jerk = (0.15 if tcs else 0.05) * signal * np.linspace(0.2, 1, n_frames) * np.sin(2 * np.pi * 3 * times)
    for joint in ((13, 15, 25, 27, 14, 16, 26, 28) if tcs else (13, 15, 25, 27)):
        pose[:, joint, 1] += jerk
    hands = np.tile(pose[:, None, :21, :3], (1, 2, 1, 1))
    arrays = {
        R.FRAME_TIMES: times,
        R.ROTATION: np.zeros(n_frames, np.int16),
        R.POSE: pose,
        R.POSE_MASK: np.ones(n_frames, bool),
        R.HANDS: hands,
        R.HANDS_MASK: rng.random((n_frames, 2)) > 0.2,
        R.FACE: np.zeros((n_frames, 4, 3), np.float32),
        R.FACE_MASK: np.zeros(n_frames, bool),
        R.FACE_BLENDSHAPES: np.zeros((n_frames, 52), np.float32),
        R.HEAD_POSE: np.zeros((n_frames, 3), np.float32),
        R.SNIPPET_FEATURES: feats,
        R.SNIPPET_TIMES: np.stack([np.arange(n_snippets) * snippet_frames / fps,
                                   (np.arange(n_snippets) + 1) * snippet_frames / fps], axis=1).astype(np.float32),
    }
    return SeizureRecord(
        record_id=f"{patient}-{index:02d}", patient_pseudonym=patient, label=label, fps=fps,
        duration_s=float(n_frames / fps), arrays=arrays, onset_s=0.0,
        generalization_s=float(n_frames / fps / 2) if tcs else None, stcnn=stcnn, snippet_frames=snippet_frames,
        models={"i3d_kinetics400_rgb": sha}, stcnn_input=stcnn_input,
    )


def populate(records_dir: Path, *, n_patients: int = 12, seizures: tuple[int, ...] = (1, 2, 3), seed: int = 0,
             dim: int = 32, n_snippets: int = 20, signal: float = 1.0, stcnn_input: str = "") -> list[SeizureRecord]:
    """Write records for n patients (alternating majority label) and return them."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        k = seizures[p % len(seizures)]
        for j in range(k):
            label = "TCS" if (p + (j == k - 1 and k > 2)) % 2 else "FOS"
            rec = make_record(rng, patient=f"p{p:03d}", index=j, label=label, dim=dim, n_snippets=n_snippets, signal=signal,
                              stcnn_input=stcnn_input)
            write_record(records_dir, rec)
            out.append(rec)
    return out
