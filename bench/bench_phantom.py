"""Benchmark the seizure phantom: render speed, MediaPipe pose detection and keypoint error per scene, learnability.

Prints a markdown table. Usage:
    .venv/bin/python bench/bench_phantom.py [--clips 3] [--seconds 20] [--mode video|image] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from semiofed.phantom.body import sample_anthropometry
from semiofed.phantom.dataset import GenerateConfig, plan_dataset
from semiofed.phantom.detect import keypoint_error, run_pose
from semiofed.phantom.encode import read_frames, video_codec, write_mp4
from semiofed.phantom.episode import EpisodeSpec, simulate
from semiofed.phantom.learnability import grouped_cv, jitter_keypoints, motion_features
from semiofed.phantom.render import Renderer
from semiofed.phantom.scene import SCENES, SiteStyle, sample_scene
from semiofed.phantom.semiology import plan_seizure, sample_traits

CONDITIONS = [(kind, "day", 0.0, 0.0) for kind in SCENES] + [(kind, "ir_night", 1.0, 0.0) for kind in SCENES] + [
    ("bed_side", "blanket", 0.0, 1.0), ("ceiling", "blanket", 0.0, 1.0), ("bed_sitting", "blanket", 0.0, 1.0)]


def episode(kind: str, seed: int, seconds: float, ir: float, blanket: float) -> EpisodeSpec:
    """A clip of one scene kind whose seizure fills most of `seconds`."""
    rng = np.random.default_rng([seed, 5])
    body, traits = sample_anthropometry(rng), sample_traits(rng, 0.5)
    label = ("FOS", "TCS")[seed % 2]
    plan = plan_seizure(traits, label, (max(seconds - 5, 10), max(seconds - 5, 10)), rng)
    style = SiteStyle({kind: 1.0}, ir, (1.0, 2.0), (23, 26), 1.0, blanket, 0.0, 0.0)
    scene = sample_scene(kind, style, (320, 240), plan.video_s, rng)
    return EpisodeSpec("P001", "P001-S1", body, traits, replace(plan, video_s=min(plan.video_s, seconds + 10)), scene, 15.0, seed)


def render_speed(tmp: Path) -> list[str]:
    """Seconds to simulate, render and encode a 60 s, 320x240, 15 fps clip, per scene."""
    rows = []
    for kind in SCENES:
        spec = episode(kind, 1, 50.0, 0.0, 0.0)
        spec = replace(spec, plan=replace(spec.plan, video_s=60.0))
        start = time.perf_counter()
        frames = write_mp4(tmp / "speed.mp4", Renderer(simulate(spec)).frames(), 15.0, (320, 240), 23)
        seconds = time.perf_counter() - start
        rows.append(f"| {kind} | {frames} | {seconds:.2f} | {1000 * seconds / frames:.2f} | {(tmp / 'speed.mp4').stat().st_size / 1e3:.0f} |")
    return rows


def detection(tmp: Path, clips: int, seconds: float, video_mode: bool, model_dir: str | None) -> list[str]:
    """MediaPipe pose on the encoded clips: detection rate and normalised keypoint error per condition."""
    rows = []
    for kind, name, ir, blanket in CONDITIONS:
        rates, nme, pck, swapped = [], [], [], []
        for clip in range(clips):
            spec = episode(kind, 100 + clip, seconds, ir, blanket)
            ep = simulate(spec)
            path = tmp / "det.mp4"
            write_mp4(path, Renderer(ep).frames(), spec.fps, spec.size, spec.scene.crf)
            result = run_pose(read_frames(path), spec.fps, model_dir, video_mode=video_mode)
            err = keypoint_error(result, ep.joints_2d)
            rates.append(result.detection_rate)
            nme.append(err["nme"])
            pck.append(err["pck10"])
            swapped.append(err["nme_swapped"])
            print(f"  {kind}/{name} clip {clip}: {result.detection_rate:.2f}", file=sys.stderr, flush=True)
        rows.append(f"| {kind} | {name} | {clips} | {np.mean(rates):.2f} (min {np.min(rates):.2f}) | "
                    f"{np.nanmean(nme):.3f} | {np.nanmean(pck):.2f} | {np.nanmean(swapped):.3f} |")
    return rows


def learnability(patients: int) -> list[str]:
    """Patient-grouped CV balanced accuracy: motion statistics vs duration alone."""
    _, videos = plan_dataset(GenerateConfig(sites=3, patients=patients, seizures_per_patient=(1, 4), seed=42))
    rng = np.random.default_rng(0)
    x, x_clean, duration, y, groups = [], [], [], [], []
    for video in videos:
        plan = video.spec.plan
        pose = simulate(video.spec).joints_2d[:, :33]
        x_clean.append(motion_features(pose, video.spec.fps, plan.onset_s, plan.offset_s))
        x.append(motion_features(jitter_keypoints(pose, rng), video.spec.fps, plan.onset_s, plan.offset_s))
        duration.append([np.log(plan.offset_s - plan.onset_s)])
        y.append(int(plan.label == "TCS"))
        groups.append(video.spec.patient_id)
    y, groups = np.array(y), np.array(groups)
    rows = [f"| seizures / patients / TCS share | {len(y)} / {patients} / {y.mean():.2f} |"]
    for name, feats in (("motion statistics, ground-truth 2D", x_clean), ("motion statistics, 2D + 1% jitter", x),
                        ("duration alone", duration)):
        rows.append(f"| {name} | {grouped_cv(np.array(feats), y, groups).balanced_accuracy:.3f} |")
    return rows


def main() -> None:
    """Run the benchmark and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3, help="clips per scene condition")
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length for detection")
    parser.add_argument("--mode", choices=("video", "image"), default="video", help="MediaPipe running mode")
    parser.add_argument("--patients", type=int, default=60, help="patients for the learnability check")
    parser.add_argument("--model-dir", default=None, help="model directory (default: $SEMIOFED_MODEL_DIR)")
    parser.add_argument("--skip-detection", action="store_true", help="skip the MediaPipe part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(f"## Render speed (60 s, 320x240, 15 fps, codec {video_codec()})\n")
        print("| scene | frames | seconds | ms/frame | kB |\n|---|---|---|---|---|")
        print("\n".join(render_speed(tmp)))
        if not args.skip_detection:
            print(f"\n## MediaPipe pose_landmarker_full ({args.mode} mode), {args.clips} x {args.seconds:g} s clips per row\n")
            print("| scene | condition | clips | detection rate | NME (core 13, / body bbox diag) | PCK@0.1 | NME L/R swapped |")
            print("|---|---|---|---|---|---|---|")
            print("\n".join(detection(tmp, args.clips, args.seconds, args.mode == "video", args.model_dir)))
        print("\n## Learnability (logistic regression, 5-fold patient-grouped CV, balanced accuracy)\n")
        print("| features | balanced accuracy |\n|---|---|")
        print("\n".join(learnability(args.patients)))


if __name__ == "__main__":
    main()
