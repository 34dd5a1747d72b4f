"""Does the STCNN stream carry the seizure or the scene? Linear probes for the label, the camera view and the site.

Usage: python bench/bench_stcnn_motion.py [--root /tmp/semiofed-bench/stcnn-motion] [--patients 60] [--seed 5150]
       [--write]

A phantom cohort (3 hospitals, one 12-16 s clip per patient, the demo's clip
lengths) is run through the real `site prepare` (MediaPipe pose + I3D) twice:
once with GESTURES' STCNN input (`--stcnn-input frame-snippet`: the frame's
centre square, every 8-frame snippet its own clip) and once with the default
(`patient-window`: a square around the patient's pose, each ~2 s window one
clip). For each, a seizure-level summary of a stream is probed with a
class-balanced linear ridge classifier, patient-grouped 5-fold, 5 split
seeds, for three targets: the seizure type (FOS/TCS), the camera view
(bed_side, ceiling, bed_sitting, chair) and the hospital. A stream that
carries the movement predicts the seizure type well and the camera view
poorly; one that carries the scene does the reverse. Summaries:

  stcnn         the raw STCNN feature, averaged over the seizure (what GESTURES' model starts from)
  stcnn_motion  the STCNN motion stream (common/records/features.py): mean, std and 90th percentile over the
                seizure of its two columns (change over 2 s and over 4 s)
  keypoints     the ten motion descriptors of the default model (common/records/motion.py), mean over the seizure

Results (balanced accuracy and chance level per target) go to stdout, and with --write to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantom_cohort import BENCH_DIR  # noqa: E402
from report import write_section  # noqa: E402

from semiofed.client.site import init_site, open_site  # noqa: E402
from semiofed.client.training.local import load_site_records  # noqa: E402
from semiofed.common.constants import STCNN_INPUT_FRAME, STCNN_INPUT_PATIENT, STREAM_POSE, STREAM_STCNN  # noqa: E402
from semiofed.common.learning.metrics import patient_group_kfold  # noqa: E402
from semiofed.common.learning.spec import DEFAULT_MODEL  # noqa: E402
from semiofed.common.records.features import keypoint_columns, keypoint_snippet_features, stcnn_motion_features  # noqa: E402
from semiofed.common.records.schema import SNIPPET_FEATURES, SeizureRecord  # noqa: E402

log = logging.getLogger("bench_stcnn_motion")

ROOT = BENCH_DIR / "stcnn-motion"
FOLDS, SPLIT_SEEDS, RIDGE = 5, (0, 1, 2, 3, 4), 3.0  # fixed before any run
TARGETS = ("label", "view", "site")
INPUTS = (STCNN_INPUT_FRAME, STCNN_INPUT_PATIENT)


def build_cohort(root: Path, *, patients: int, seed: int, sites: int = 3,
                 inputs: Sequence[str] = INPUTS) -> dict[str, list[Path]]:
    """Render the phantom cohort once and prepare it with each STCNN input; {input: site dirs}. Resumable."""
    from semiofed.client.deid.pipeline import DeidentifyConfig
    from semiofed.client.deid.prepare import prepare_site
    from semiofed.phantom.dataset import GenerateConfig, plan_dataset, render_videos, write_manifests

    videos = root / "videos"
    config = GenerateConfig(sites=sites, patients=patients, min_patients_per_site=max(1, patients // (2 * sites)),
                            seizures_per_patient=(1, 1), seed=seed, duration_s=(10.0, 12.0), lead_s=(1.0, 2.0),
                            tail_s=(1.0, 2.0))
    _, planned = plan_dataset(config)
    if not (videos / "done.json").is_file():
        render_videos(planned, videos, workers=os.cpu_count() or 1)
        write_manifests(videos, planned)
        (videos / "done.json").write_text(json.dumps({"patients": patients, "seed": seed}))
    out: dict[str, list[Path]] = {}
    for stcnn_input in inputs:
        dirs = []
        for manifest in sorted(videos.glob("*/manifest.csv")):
            site_dir = root / stcnn_input / manifest.parent.name
            site = open_site(site_dir) if (site_dir / "site.json").is_file() else init_site(site_dir, manifest.parent.name)
            started = time.monotonic()
            prepare_site(site, manifest, config=DeidentifyConfig(streams=(STREAM_POSE, STREAM_STCNN), stcnn_input=stcnn_input))
            log.info("%s %s prepared in %.0f s", stcnn_input, manifest.parent.name, time.monotonic() - started)
            dirs.append(site_dir)
        out[stcnn_input] = dirs
    return out


def _pool(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values.mean(0), values.std(0), np.percentile(values, 90, axis=0)])


SUMMARIES: dict[str, Callable[[SeizureRecord], np.ndarray]] = {
    "stcnn": lambda r: np.nan_to_num(r.arrays[SNIPPET_FEATURES].astype(np.float64)).mean(0),
    "stcnn_motion": lambda r: _pool(stcnn_motion_features(r).astype(np.float64)),
    "keypoints": lambda r: keypoint_snippet_features(r)[:, list(keypoint_columns(DEFAULT_MODEL.descriptors))].mean(0),
}


def ridge_probe(x: np.ndarray, target: Sequence[str], patients: Sequence[str], seed: int) -> float:
    """Balanced accuracy of a class-balanced linear ridge classifier (one-vs-rest scores, argmax) under
    patient-grouped FOLDS-fold cross-validation; features standardised on each training fold."""
    classes = sorted(set(target))
    y = np.array([classes.index(t) for t in target])
    folds = patient_group_kfold(list(patients), [classes.index(t) for t in target], FOLDS, seed=seed)
    fold_of = {p: k for k, members in enumerate(folds) for p in members}
    fold = np.array([fold_of[p] for p in patients])
    predicted = np.zeros(len(y), dtype=int)
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        if not test.any():
            continue
        mean, std = x[train].mean(0), x[train].std(0) + 1e-9
        a, b = (x[train] - mean) / std, (x[test] - mean) / std
        weight = (1.0 / np.bincount(y[train], minlength=len(classes)).clip(min=1))[y[train]]
        onehot = np.eye(len(classes))[y[train]]
        centred = onehot - (onehot * weight[:, None]).sum(0) / weight.sum()
        # dual ridge with sample weights: alpha = (W K + lambda I)^-1 W Y
        alpha = np.linalg.solve(weight[:, None] * (a @ a.T) + RIDGE * np.eye(len(a)), weight[:, None] * centred)
        predicted[test] = (b @ a.T @ alpha).argmax(1)
    return float(np.mean([np.mean(predicted[y == c] == c) for c in range(len(classes)) if np.any(y == c)]))


def probe_cohort(site_dirs: Sequence[Path], summaries: Sequence[str] = tuple(SUMMARIES)) -> dict[str, dict[str, dict]]:
    """{summary: {target: {balanced_accuracy (mean over split seeds), chance, seeds}}} for one prepared cohort."""
    records = [(d.name, r) for d in site_dirs for r in load_site_records(open_site(d), DEFAULT_MODEL.labels)]
    patients = [r.patient_pseudonym for _, r in records]
    targets = {"label": [r.label for _, r in records], "view": [r.view or "none" for _, r in records],
               "site": [site for site, _ in records]}
    out: dict[str, dict[str, dict]] = {}
    for name in summaries:
        x = np.stack([SUMMARIES[name](r) for _, r in records])
        out[name] = {}
        for target in TARGETS:
            scores = [ridge_probe(x, targets[target], patients, seed) for seed in SPLIT_SEEDS]
            out[name][target] = {"balanced_accuracy": float(np.mean(scores)), "chance": 1.0 / len(set(targets[target])),
                                 "seeds": [round(s, 3) for s in scores]}
    return out


def cohort_line(site_dirs: Sequence[Path]) -> str:
    records = [r for d in site_dirs for r in load_site_records(open_site(d), DEFAULT_MODEL.labels)]
    labels, views = [r.label for r in records], [r.view for r in records]
    return (f"{len(site_dirs)} sites, {len(records)} seizures of {len({r.patient_pseudonym for r in records})} patients "
            f"(FOS {labels.count('FOS')}, TCS {labels.count('TCS')}; views "
            + ", ".join(f"{v} {views.count(v)}" for v in sorted(set(views))) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--seed", type=int, default=5150)
    parser.add_argument("--write", action="store_true", help="write the section 'stcnn-motion' of docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("semiofed").setLevel(logging.WARNING)
    started = time.monotonic()
    cohorts = build_cohort(args.root, patients=args.patients, seed=args.seed)
    results = {stcnn_input: probe_cohort(dirs) for stcnn_input, dirs in cohorts.items()}
    (args.root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"`python bench/bench_stcnn_motion.py --patients {args.patients} --seed {args.seed} --write`",
        "",
        f"Cohort: phantom seed {args.seed} (not used to design the stream), {cohort_line(cohorts[STCNN_INPUT_PATIENT])}, "
        "through the real `site prepare` (MediaPipe pose + I3D) once per STCNN input. Probe: class-balanced linear "
        f"ridge classifier (lambda {RIDGE:g}) on a seizure-level summary of the stream, patient-grouped {FOLDS}-fold, "
        f"balanced accuracy averaged over {len(SPLIT_SEEDS)} split seeds (chance in brackets). A stream that carries "
        f"the movement predicts the seizure type and not the camera view. Run time {time.monotonic() - started:.0f} s "
        "(render, prepare twice, probes).",
        "",
        "| STCNN input | stream summary | seizure type (FOS/TCS) | camera view | hospital |",
        "|---|---|---|---|---|",
    ]
    for stcnn_input, by_summary in results.items():
        for name, by_target in by_summary.items():
            if name == "keypoints" and stcnn_input != STCNN_INPUT_PATIENT:
                continue  # the keypoint stream does not depend on the STCNN input
            cells = [f"{by_target[t]['balanced_accuracy']:.2f} ({by_target[t]['chance']:.2f})" for t in TARGETS]
            lines.append(f"| {'-' if name == 'keypoints' else stcnn_input} | {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        # the reading of the committed section (written by hand from this table) stays beside the new table
        note = Path(__file__).with_name("stcnn_motion_note.md")
        text += "\n\n" + note.read_text(encoding="utf-8").strip() if note.is_file() else ""
        write_section("stcnn-motion", "The STCNN stream: movement or scene? (issue 13)", text)


if __name__ == "__main__":
    main()
