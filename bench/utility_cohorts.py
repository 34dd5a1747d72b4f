"""The held-out phantom cohorts of issue 13's utility table, built the way `semiofed demo` builds its sites, and cached.

Usage: python bench/utility_cohorts.py [--only sites10-p150 sites3-p30 reference] [--root /tmp/semiofed-bench/cohorts]

Cohorts (one seizure per patient, the non-quick demo's clip lengths: 10-12 s seizures with 1-2 s before and after,
320x240, `DemoConfig.phantom()`'s settings except sites, patients and seed; seeds never used before, not tuned on):
  sites10-p150  10 sites x 15 patients, phantom seed 7101
  sites3-p30     3 sites x 10 patients, phantom seed 7102
  explain-p40    2 sites x 20 patients, phantom seed 7201, the phantom's 3-12 s before and 3-15 s after each
                seizure (onset and postictal measurable), 30% of seizures of a semiology no model trains on
                (hypermotor, non-epileptic): the held-out cohort of bench/bench_explain.py (issue 17)
  explain-lateral  2 sites x 40 patients, phantom seed 7202, the demo's clips, FOS and TCS only: a second held-out
                cohort of bench/bench_explain.py, large enough to count the lateralised focal seizures (issue 17)
  explain-lateral-2  2 sites x 40 patients, phantom seed 7404, the same: a third held-out cohort, first used to
                measure the seen/guessed-limb descriptors of 2026-12-07 (issue 17)
  explain-lateral-3  2 sites x 40 patients, phantom seed 7505, the same: a fourth held-out cohort, built to measure
                what a side output trained on side labels would reach (bench/bench_side_evidence.py, issue 17)
  explain-lateral-dev  2 sites x 40 patients, phantom seed 7303, the same: the design cohort of the region
                attributions (never a reported figure)
  explain-unusual  2 sites x 40 patients, phantom seed 7606, the long clips, half of a semiology no model trains on:
                a second held-out cohort of the unusual-seizure score, large enough to read each unusual
                semiology alone (issue 17)
  explain-unusual-2  2 sites x 40 patients, phantom seed 7808, the same: a third held-out cohort of the unusual-seizure
                score, for the reference-size figure (issue 17)
  explain-unusual-3  2 sites x 40 patients, phantom seed 7909, the same: a fourth held-out cohort of the
                unusual-seizure score, for its per-label form (issue 17)
  explain-unusual-4  2 sites x 40 patients, phantom seed 8101, the same: a fifth held-out cohort, built to measure
                the unusual-seizure score's form of the afternoon, never looked at before (issue 17)
  explain-unusual-5  2 sites x 40 patients, phantom seed 8202, the same: a sixth, built with the fifth
  explain-unusual-6  2 sites x 40 patients, phantom seed 8303, the same: a seventh, built after the fifth and sixth
                were scored, to narrow their interval (reported whatever it gave)
  explain-unusual-dev  2 sites x 40 patients, phantom seed 7707, the same: the design cohort of the unusual-seizure
                score's form (never a reported figure)
  explain-unusual-dev-2  2 sites x 40 patients, phantom seed 7717, the same: a second design cohort of that score,
                so that a form is chosen on 80 unusual seizures, not 40 (never a reported figure)
  explain-dev    2 sites x 12 patients, phantom seed 7301, half unusual: the design cohort of issue 17's
                evolution, attribution and unusual-seizure settings (never a reported figure)
  explain-dev-usual  2 sites x 20 patients, phantom seed 7302, FOS and TCS only: the design cohort of how the
                classifier reads a long video (never a reported figure)
  explain-reference  1 site x 24 patients, phantom seed 7920, the long clips, FOS and TCS only: the public
                reference of the unusual-seizure check for the long-clip cohorts (a reference made like the footage
                it is compared with)
  explain-reference-72  1 site x 72 patients, phantom seed 7940, the same: a public reference larger than the
                unusual score's embedding (65 numbers), for the reference-size figure
  reference     the demo's public reference cohort (`DemoConfig(seed=0).reference()`: 24 patients of seed
                0 + REFERENCE_SEED_OFFSET), which sets every model's decision threshold

Each is rendered (semiofed.phantom, in processes) and run through the real `site init` + `site prepare` (the
functions server/demo.py calls, with `DemoConfig.deidentify()`: the pose stream only; one prepare worker, as the
demo). Layout: ROOT/<name>/videos/<site>/manifest.csv, ROOT/<name>/sites/<site>/ (site stores),
ROOT/reference-site/ (the reference store), ROOT/<name>/cohort.json (counts and timings). Resumable: rendered clips
and prepared records are skipped; a cohort whose cohort.json matches its settings is reused as is.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantom_cohort import BENCH_DIR  # noqa: E402

log = logging.getLogger("utility_cohorts")

ROOT = BENCH_DIR / "cohorts"
COHORT_FILE = "cohort.json"
REFERENCE = "reference"
# The explain cohorts keep the phantom's own time before and after the seizure (3-12 s and 3-15 s), so onset and
# postictal phases can be measured; the others have the demo's 1-2 s.
LONG_CLIPS = ("explain-p40", "explain-unusual", "explain-unusual-2", "explain-unusual-3", "explain-unusual-4",
              "explain-unusual-5", "explain-unusual-6", "explain-unusual-dev",
              "explain-unusual-dev-2",
              "explain-dev",
              "explain-dev-usual", "explain-reference", "explain-reference-72")
# name -> (sites, patients, phantom seed, share of unusual semiologies)
COHORTS: dict[str, tuple[int, int, int, float]] = {"sites10-p150": (10, 150, 7101, 0.0), "sites3-p30": (3, 30, 7102, 0.0),
                                                   "explain-p40": (2, 40, 7201, 0.3), "explain-lateral": (2, 80, 7202, 0.0),
                                                   "explain-lateral-2": (2, 80, 7404, 0.0),
                                                   "explain-lateral-3": (2, 80, 7505, 0.0),
                                                   "explain-lateral-dev": (2, 80, 7303, 0.0),
                                                   "explain-unusual": (2, 80, 7606, 0.5),
                                                   "explain-unusual-dev": (2, 80, 7707, 0.5),
                                                   "explain-unusual-dev-2": (2, 80, 7717, 0.5),
                                                   "explain-unusual-2": (2, 80, 7808, 0.5),
                                                   "explain-unusual-3": (2, 80, 7909, 0.5),
                                                   "explain-unusual-4": (2, 80, 8101, 0.5),
                                                   "explain-unusual-5": (2, 80, 8202, 0.5),
                                                   "explain-unusual-6": (2, 80, 8303, 0.5),
                                                   "explain-reference-72": (1, 72, 7940, 0.0),
                                                   "explain-dev": (2, 24, 7301, 0.5),
                                                   "explain-dev-usual": (2, 40, 7302, 0.0),
                                                   "explain-reference": (1, 24, 7919 + 1, 0.0)}


def generate_config(name: str) -> Any:
    """The cohort's GenerateConfig: the non-quick demo's, with this cohort's sites, patients and seed."""
    from semiofed.server.demo import DemoConfig

    if name == REFERENCE:
        return DemoConfig(out=ROOT, seed=0).reference()
    sites, patients, seed, unusual = COHORTS[name]
    config = replace(DemoConfig(out=ROOT, sites=sites, seed=seed).phantom(), patients=patients,
                     min_patients_per_site=patients // sites, unusual_fraction=unusual)
    if name in LONG_CLIPS:
        from semiofed.phantom.semiology import DEFAULT_LEAD_S, DEFAULT_TAIL_S

        config = replace(config, lead_s=DEFAULT_LEAD_S, tail_s=DEFAULT_TAIL_S)
    return config


def _render_missing(planned: list[Any], videos: Path) -> int:
    """Render the planned videos whose file (or truth) is missing; return how many were rendered."""
    from semiofed.phantom.dataset import render_video

    todo = [v for v in planned if not ((videos / v.site / v.relpath).is_file()
                                       and (videos / v.site / "truth" / (Path(v.relpath).stem + ".json")).is_file())]
    if todo:
        workers = min(len(todo), os.cpu_count() or 1)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for k, _ in enumerate(pool.map(render_video, todo, [videos] * len(todo))):
                if (k + 1) % 10 == 0 or k + 1 == len(todo):
                    log.info("rendered %d/%d", k + 1, len(todo))
    return len(todo)


def cohort_dirs(name: str, root: Path = ROOT) -> list[Path]:
    """The site stores of a cohort (one for the reference)."""
    if name == REFERENCE:
        return [root / "reference-site"]
    return sorted(d for d in (root / name / "sites").iterdir() if (d / "site.json").is_file())


def build(name: str, root: Path = ROOT) -> dict[str, Any]:
    """Render and prepare one cohort (or reuse it); return its summary."""
    from semiofed.client.deid.prepare import prepare_site
    from semiofed.client.site import init_site, open_site
    from semiofed.client.training.local import load_site_records
    from semiofed.common.learning.spec import DEFAULT_MODEL
    from semiofed.phantom.dataset import plan_dataset, write_manifests
    from semiofed.phantom.semiology import UNUSUAL_LABELS
    from semiofed.server.demo import DemoConfig

    config = generate_config(name)
    settings = json.loads(json.dumps({"generate": asdict(config), "deidentify": asdict(DemoConfig(out=root).deidentify())}))
    base = root / name
    summary_path = base / COHORT_FILE
    if summary_path.is_file() and json.loads(summary_path.read_text())["settings"] == settings:
        log.info("reusing %s", base)
        return json.loads(summary_path.read_text())
    started = time.monotonic()
    _, planned = plan_dataset(config)
    videos = base / "videos"
    rendered = _render_missing(planned, videos)
    manifests = sorted(write_manifests(videos, planned))
    render_s = time.monotonic() - started
    seconds = sum(v.spec.num_frames / v.spec.fps for v in planned)
    log.info("%s: %d clips (%d rendered now), %.0f s of video, %.0f s; preparing", name, len(planned), rendered, seconds,
             render_s)
    prep_started = time.monotonic()
    sites = []
    for manifest in manifests:
        site_dir = root / "reference-site" if name == REFERENCE else base / "sites" / manifest.parent.name
        site_name = REFERENCE if name == REFERENCE else manifest.parent.name
        # the public reference cohorts (the threshold's, the unusual-seizure check's) are marked as public stores
        site = open_site(site_dir) if (site_dir / "site.json").exists() else \
            init_site(site_dir, site_name, public_reference=name.endswith(REFERENCE))
        t0 = time.monotonic()
        outcomes = prepare_site(site, manifest, config=DemoConfig(out=root).deidentify())
        labels = DEFAULT_MODEL.labels + UNUSUAL_LABELS
        records = load_site_records(site, labels)
        rates = [r.detection_rate.get("pose", 0.0) for r in records]
        sites.append({"site": site_name, "site_dir": str(site_dir), "patients": len({r.patient_pseudonym for r in records}),
                      "seizures": len(records),
                      "labels": {label: sum(r.label == label for r in records) for label in labels},
                      "failed": sum(o.status == "failed" for o in outcomes),
                      "pose_detection": round(sum(rates) / max(len(rates), 1), 3),
                      "prepare_s": round(time.monotonic() - t0, 1)})
        log.info("%s/%s: %d seizures prepared (%d failed) in %.0f s", name, site_name, len(records), sites[-1]["failed"],
                 sites[-1]["prepare_s"])
    prepare_s = time.monotonic() - prep_started
    summary = {"settings": settings, "name": name, "seed": config.seed, "sites": sites,
               "patients": sum(s["patients"] for s in sites), "seizures": sum(s["seizures"] for s in sites),
               "labels": {label: sum(s["labels"][label] for s in sites) for label in DEFAULT_MODEL.labels + UNUSUAL_LABELS},
               "failed": sum(s["failed"] for s in sites), "video_seconds": round(seconds, 1),
               "render_seconds": round(render_s, 1), "prepare_seconds": round(prepare_s, 1),
               "prepare_s_per_video_s": round(prepare_s / seconds, 3)}  # only meaningful on a first (not resumed) run
    base.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--only", nargs="+", choices=[REFERENCE, *COHORTS], default=[REFERENCE, "sites3-p30", "sites10-p150"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("semiofed").setLevel(logging.WARNING)
    for name in args.only:
        summary = build(name, args.root)
        print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=1), flush=True)


if __name__ == "__main__":
    main()
