"""One phantom site-store cohort for the utility and membership-inference benchmarks, built once and cached.

Usage: python bench/phantom_cohort.py [--root /tmp/semiofed-bench/cohort]

Generates one hospital's phantom patients (semiofed.phantom: plan, simulate,
render, encode), then runs the real `site prepare` (MediaPipe + I3D) into a
site store. Preparing runs at about 1.3x real time on 2 cores, so the cohort
is sized to ~12 minutes of video: 48 patients, 1-2 seizures each, 10-10.5 s
seizures, and each clip holds the seizure only (onset to offset, as GESTURES
classifies annotated seizure segments; the phantom's 3-27 s of calm before
and after would double the preparation time and carry no label). Rendering
only the seizure's frames keeps one encode generation; the manifest's times
are shifted to the clip.

A finished cohort (cohort.json present, same settings) is reused; an
interrupted one resumes (rendered clips and finished records are skipped).
Benchmarks train in scratch sites (`scratch_site`) so that each privacy
setting starts with a fresh budget and the cohort's own budget is never spent.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from semiofed.client.training.local import load_site_records
from semiofed.client.deid.prepare import prepare_site
from semiofed.client.site import Site, init_site, open_site
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.records.schema import META_FILE
from semiofed.phantom.dataset import MANIFEST_HEADER, GenerateConfig, PlannedVideo, manifest_row, plan_dataset
from semiofed.phantom.encode import write_mp4
from semiofed.phantom.episode import simulate
from semiofed.phantom.render import Renderer

log = logging.getLogger("phantom_cohort")

BENCH_DIR = Path(os.environ.get("SEMIOFED_BENCH_DIR", "/tmp/semiofed-bench"))
COHORT_DIR = BENCH_DIR / "cohort"
COHORT_FILE = "cohort.json"
SITE_ID = "phantom_cohort"
# one site (the emu_bedside preset: bed, sitting and ceiling views, 15% IR night, TCS share 0.5);
# 48 patients split 24/24 for membership inference and 5 folds of ~10 for cross-validation
# seed 2021: 71 clips, 728 s of video (of seeds 2020-2031 the one closest to 12 minutes with a balanced label mix)
CONFIG = GenerateConfig(sites=1, patients=48, seizures_per_patient=(1, 2), seed=2021, duration_s=(10.0, 10.5))


def _clip_row(video: PlannedVideo, out: Path) -> tuple[dict[str, str], float]:
    """Render the frames from onset to offset of one planned video; its manifest row (times shifted) and length."""
    spec, plan = video.spec, video.spec.plan
    start = max(0, int(round(plan.onset_s * spec.fps)))
    stop = min(spec.num_frames, int(round(plan.offset_s * spec.fps)))
    path = out / video.relpath
    if not path.is_file():
        renderer = Renderer(simulate(spec))
        write_mp4(path, (renderer.frame(i) for i in range(start, stop)), spec.fps, spec.size, spec.scene.crf)
    shift = start / spec.fps
    row = manifest_row(video) | {"onset_s": "0.00", "offset_s": f"{(stop - start) / spec.fps:.2f}"}
    if plan.generalization_s is not None:
        row["generalization_s"] = f"{max(plan.generalization_s - shift, 0.0):.2f}"
    return row, (stop - start) / spec.fps


def _settings() -> dict[str, object]:
    return {"generate": asdict(CONFIG), "clip": "onset..offset"}


def build_cohort(root: Path = COHORT_DIR) -> Path:
    """Generate and prepare the cohort under `root` (or reuse it); return its site directory."""
    summary_path = root / COHORT_FILE
    site_dir = root / "site"
    if summary_path.is_file() and json.loads(summary_path.read_text())["settings"] == json.loads(json.dumps(_settings())):
        log.info("reusing the cohort in %s", root)
        return site_dir
    started = time.monotonic()
    _, planned = plan_dataset(CONFIG)
    videos_dir = root / "videos"
    rows, seconds = [], 0.0
    for k, video in enumerate(planned):
        row, length = _clip_row(video, videos_dir)
        rows.append(row)
        seconds += length
        log.info("clip %d/%d %s (%s, %.1f s)", k + 1, len(planned), row["video"], row["label"], length)
    rendered = time.monotonic() - started
    manifest = videos_dir / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=MANIFEST_HEADER, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    log.info("%d clips, %.0f s of video, rendered in %.0f s; preparing (MediaPipe + I3D)", len(rows), seconds, rendered)

    site = open_site(site_dir) if (site_dir / "site.json").exists() else init_site(site_dir, SITE_ID)
    prep_started = time.monotonic()
    done = [0]

    def progress(outcome: object) -> None:
        done[0] += 1
        log.info("prepared %d/%d (%s) after %.0f s", done[0], len(rows), outcome.status, time.monotonic() - prep_started)

    outcomes = prepare_site(site, manifest, on_outcome=progress)
    prepared = time.monotonic() - prep_started
    failed = [o for o in outcomes if o.status == "failed"]
    records = load_site_records(site, ("FOS", "TCS"))
    detection = [r.detection_rate.get("pose", 0.0) for r in records]
    summary = {
        "settings": _settings(),
        "site_dir": str(site_dir),
        "clips": len(rows),
        "video_seconds": round(seconds, 1),
        "records": len(records),
        "failed": len(failed),
        "failures": sorted({o.error or "" for o in failed}),
        "patients": len({r.patient_pseudonym for r in records}),
        "labels": {label: sum(r.label == label for r in records) for label in ("FOS", "TCS")},
        "views": {v: sum(r.view == v for r in records) for v in sorted({r.view or "" for r in records})},
        "mean_pose_detection": round(sum(detection) / max(len(detection), 1), 3),
        "render_seconds": round(rendered, 1),
        # only meaningful on a first (not resumed) run
        "prepare_seconds": round(prepared, 1),
        "prepare_x_realtime": round(seconds / prepared, 2) if prepared > 0 else None,
    }
    summary_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return site_dir


def cohort_summary(root: Path = COHORT_DIR) -> dict[str, object]:
    """The cohort's summary (counts, timing) written by `build_cohort`."""
    return json.loads((root / COHORT_FILE).read_text(encoding="utf-8"))


def scratch_site(cohort_site: Path, dest: Path, *, max_epsilon: float = 1000.0, delta: float = 1e-5,
                 min_noise_multiplier: float = 0.3, distributed_dp_sites: int = 0) -> Site:
    """A fresh site (fresh budget) at `dest` holding copies of the cohort's records."""
    if dest.exists():
        shutil.rmtree(dest)
    site = init_site(dest, "scratch", PrivacyPolicy(max_epsilon=max_epsilon, target_delta=delta,
                                                     min_noise_multiplier=min_noise_multiplier,
                                                     distributed_dp_sites=distributed_dp_sites))
    cohort = open_site(cohort_site)
    for record in sorted(p for p in cohort.layout.records_dir.iterdir() if (p / META_FILE).is_file()):
        shutil.copytree(record, site.layout.records_dir / record.name)
    # the cohort site's pseudonym secret too: the site's own folds (client/training/site_split.py) are keyed by it,
    # so the scratch copy holds out exactly the patients the cohort site does
    shutil.copyfile(cohort.layout.pseudonym_key, site.layout.pseudonym_key)
    return open_site(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=COHORT_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    build_cohort(args.root)
    print(json.dumps(cohort_summary(args.root), indent=1))


if __name__ == "__main__":
    main()
