"""Ground-truth files of a phantom video: a JSON of labels and set-up, an npz of per-frame joints."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from semiofed.phantom.body import HAND_LANDMARK_JOINTS, JOINTS, POSE_LANDMARK_JOINTS
from semiofed.phantom.episode import Episode

TRUTH_VERSION = 1


def phase_codes(episode: Episode) -> tuple[np.ndarray, list[str]]:
    """Per-frame phase index [T] (0 = 'interictal') and the phase names."""
    plan = episode.spec.plan
    t = np.arange(len(episode.joints_3d)) / episode.spec.fps
    names = ["interictal", "ictal"]
    codes = np.where((t >= plan.onset_s) & (t < plan.offset_s), 1, 0)
    for phase in plan.phases:
        if phase.name in ("tonic", "clonic", "postictal"):
            names.append(phase.name)
            codes[(t >= phase.start_s) & (t < phase.end_s)] = len(names) - 1
    return codes.astype(np.int8), names


def truth_json(episode: Episode, video: str) -> dict:
    """The JSON ground truth: labels, times, frame rate, scene, camera, patient."""
    spec = episode.spec
    plan = spec.plan
    width, height = spec.size
    return {
        "version": TRUTH_VERSION,
        "video": video,
        "patient_id": spec.patient_id,
        "seizure_id": spec.seizure_id,
        "label": plan.label,
        "onset_s": plan.onset_s,
        "generalization_s": plan.generalization_s,
        "offset_s": plan.offset_s,
        "duration_s": round(plan.offset_s - plan.onset_s, 3),
        "video_s": plan.video_s,
        "fps": spec.fps,
        "num_frames": spec.num_frames,
        "width": width,
        "height": height,
        "phases": plan.to_json()["phases"],
        "scene": spec.scene.to_json(),
        "anthropometry": spec.anthropometry.to_json(),
        "traits": spec.traits.to_json(),
        "seed": spec.seed,
        "joints_file": Path(video).stem + ".npz",
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asanyarray(array), allow_pickle=False)


def write_truth(episode: Episode, json_path: Path, video: str) -> None:
    """Write `<stem>.json` and `<stem>.npz` (no pickled objects) beside each other."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    codes, names = phase_codes(episode)
    _write_npz(
        json_path.with_suffix(".npz"),
        dict(
            joints_3d=episode.joints_3d.astype(np.float32),
            joints_2d=episode.joints_2d.astype(np.float32),
            joint_names=np.asarray(JOINTS),
            pose_landmark_joints=np.asarray(POSE_LANDMARK_JOINTS, dtype=np.int16),
            hand_landmark_joints=np.asarray([HAND_LANDMARK_JOINTS["left"], HAND_LANDMARK_JOINTS["right"]], dtype=np.int16),
            phase=codes,
            phase_names=np.asarray(names),
        ),
    )
    json_path.write_text(json.dumps(truth_json(episode, video), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_truth(json_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a ground-truth JSON and its npz arrays."""
    meta = json.loads(Path(json_path).read_text(encoding="utf-8"))
    with np.load(Path(json_path).with_suffix(".npz"), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays
