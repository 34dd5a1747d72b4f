"""Utility of DP on the phantom cohort: non-DP vs DP at epsilon 1, 3, 8 (delta 1e-5), per input stream, patient-grouped CV.

Usage: python bench/bench_utility.py [--folds 5 --epochs 30 --write]

Data: the phantom cohort of bench/phantom_cohort.py (real MediaPipe + I3D
records of phantom seizure videos; built on first use). Each setting runs
`semiofed site cv`'s function (client/training/cross_validation.py) in a scratch site
with a fresh budget, and reports the test metrics pooled over the folds
(every seizure tested once, after temperature scaling on the validation fold).

Epsilon is per model: each fold's model is trained at the noise that brings
one fold to epsilon, as a site training one model would. All folds together
charge more (they train on the same patients); that total is reported too.
Each setting's result is cached under /tmp/semiofed-bench/utility/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantom_cohort import BENCH_DIR, build_cohort, cohort_summary, scratch_site  # noqa: E402
from report import write_section  # noqa: E402

from semiofed.client.training.cross_validation import cross_validate, fold_splits  # noqa: E402
from semiofed.client.training.local import LocalTrainingOptions, group_patients, load_site_records  # noqa: E402
from semiofed.client.site import open_site  # noqa: E402
from semiofed.common.learning.trainer import TrainConfig  # noqa: E402
from semiofed.common.privacy.accountant import SiteAccountant  # noqa: E402

LABELS = ("FOS", "TCS")
DELTA = 1e-5
EPSILONS = (None, 1.0, 3.0, 8.0)
STREAM_SETS = (("stcnn",), ("keypoints",), ("stcnn", "keypoints"))
CACHE = BENCH_DIR / "utility"
MAX_EPSILON = 1000.0  # scratch sites only: the folds together spend more than one model's epsilon


def per_model_sigma(site_dir: Path, options: LocalTrainingOptions, epsilon: float) -> float:
    """The noise that keeps every fold's model at `epsilon` (largest fold sampling rate and step count)."""
    site = open_site(site_dir)
    patients = group_patients(load_site_records(site, LABELS), LABELS, options.streams)
    config = TrainConfig(epochs=options.epochs, batch_patients=options.batch_patients)
    sizes = [len(train) for train, _, _ in fold_splits(patients, options.folds, options.seed)]
    fresh = SiteAccountant(site.layout.root / "probe", site.policy)  # empty history: one model's epsilon
    return fresh.noise_for(target_epsilon=epsilon, sample_rate=max(config.sample_rate(n) for n in sizes),
                           steps=max(config.steps(n) for n in sizes))


def run_setting(cohort_site: Path, streams: tuple[str, ...], epsilon: float | None, args: argparse.Namespace) -> dict:
    """Cross-validate one (streams, epsilon) setting in a scratch site; cached as JSON."""
    key = f"{'+'.join(streams)}_{'nodp' if epsilon is None else f'eps{epsilon:g}'}_{args.temporal}_e{args.epochs}_f{args.folds}"
    path = CACHE / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    site = scratch_site(cohort_site, BENCH_DIR / "scratch" / "utility", max_epsilon=MAX_EPSILON, delta=DELTA)
    options = LocalTrainingOptions(epochs=args.epochs, batch_patients=args.batch_patients, lr=args.lr,
                                   dp=epsilon is not None, labels=LABELS, streams=streams, temporal=args.temporal,
                                   folds=args.folds, seed=args.seed)
    sigma = None
    if epsilon is not None:
        sigma = per_model_sigma(site.layout.root, options, epsilon)
        options = replace(options, noise_multiplier=sigma)
    started = time.monotonic()
    result = cross_validate(site.layout.root, options)
    folds = [f.test_metrics for f in result.folds]
    row = {
        "streams": "+".join(streams), "epsilon": epsilon, "sigma": sigma, "temporal": args.temporal,
        "pooled": {k: result.pooled_metrics[k] for k in ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "ece",
                                                         "n_seizures", "confusion_matrix")},
        "fold_sd": {k: float(np.nanstd([f[k] for f in folds])) for k in ("balanced_accuracy", "auroc")},
        "cv_total_epsilon": result.epsilon_spent,
        "sample_rates": [f.sample_rate for f in result.folds], "steps": [f.steps for f in result.folds],
        "n_patients": [f.n_patients for f in result.folds], "seconds": round(time.monotonic() - started, 1),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1) + "\n")
    return row


def markdown(rows: list[dict], cohort: dict, args: argparse.Namespace) -> str:
    """The benchmark section: settings, the table, and how to read it."""
    q = rows[0]["sample_rates"]
    lines = [
        f"`python bench/bench_utility.py --folds {args.folds} --epochs {args.epochs} --write`",
        "",
        f"Data: the phantom cohort (`bench/phantom_cohort.py`): {cohort['patients']} patients, {cohort['records']} "
        f"seizures (FOS {cohort['labels']['FOS']}, TCS {cohort['labels']['TCS']}) from one emu_bedside-style site, "
        f"{cohort['video_seconds']:.0f} s of 320x240 phantom video (seizure only, ~10 s each) through the real "
        f"`site prepare` (MediaPipe + I3D; {cohort['failed']} clip(s) failed, mean pose detection "
        f"{cohort['mean_pose_detection']:.2f}). Synthetic patients: read the numbers as what DP costs on this "
        "pipeline at this cohort size, not as clinical accuracy.",
        "",
        f"Model: {args.temporal.upper()} (embed 64, hidden 64, 16 segments), Adam lr {args.lr:g}, {args.epochs} epochs, "
        f"expected {args.batch_patients} patients per step (q = {min(q):.3f}-{max(q):.3f}), clipping norm 1.0. "
        f"Patient-grouped {args.folds}-fold CV (`semiofed site cv`'s function): fold k tests, fold k+1 fits the "
        "temperature, the rest train; metrics pooled over all test seizures (every seizure tested once), fold "
        "standard deviation in brackets. Epsilon is per model (delta 1e-5, PRV accountant, per patient): each "
        "fold's model is trained at the noise that brings one fold to epsilon; the folds together charge the "
        "site the total in the last column (what `site cv --epsilon` would have to fit in the budget).",
        "",
        "| streams | epsilon | sigma | accuracy | balanced acc. | AUROC | F1 | ECE | all folds charge | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, sd = r["pooled"], r["fold_sd"]
        eps = "non-DP" if r["epsilon"] is None else f"{r['epsilon']:g}"
        sigma = "-" if r["sigma"] is None else f"{r['sigma']:.2f}"
        total = "-" if r["cv_total_epsilon"] is None else f"{r['cv_total_epsilon']:.2f}"
        lines.append(
            f"| {r['streams']} | {eps} | {sigma} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} "
            f"({sd['balanced_accuracy']:.2f}) | {m['auroc']:.3f} ({sd['auroc']:.2f}) | {m['f1_macro']:.3f} | "
            f"{m['ece']:.3f} | {total} | {r['seconds']:.0f} |")
    plain = {r["streams"]: r["pooled"]["balanced_accuracy"] for r in rows if r["epsilon"] is None}
    private = [r["pooled"] for r in rows if r["epsilon"] is not None]
    best = max(plain, key=plain.get)
    lines += [
        "",
        f"Reading: without DP the {best} stream carries most of the signal (balanced accuracy "
        + ", ".join(f"{k} {v:.2f}" for k, v in plain.items())
        + "), well below what the phantom's learnability check gets from clean keypoint statistics: with ~28 "
        "training patients the model memorises them (training accuracy 1.0 after 30 epochs; see the "
        "membership-inference section) and generalises modestly. Under DP at epsilon 1-8 every setting here is at "
        f"chance (balanced accuracy {min(m['balanced_accuracy'] for m in private):.2f}-"
        f"{max(m['balanced_accuracy'] for m in private):.2f}, AUROC {min(m['auroc'] for m in private):.2f}-"
        f"{max(m['auroc'] for m in private):.2f}): with ~8 patients per step the noise (sigma x clipping norm, "
        "sigma 2-12) swamps the clipped patient gradients, so one site of this size cannot train a useful private "
        "model. On the easier synthetic records above, 60 patients kept some utility at epsilon 8 and 200 "
        "patients most of it: DP needs many patients per model, the case for federation. Each fold tests ~10 "
        "patients: differences under ~0.1 are fold noise. "
        "Seconds are wall time on a CPU shared with other jobs and vary with their load.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-patients", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temporal", default="blstm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write the section 'utility' of docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    cohort_site = build_cohort()
    rows = []
    for streams in STREAM_SETS:
        for epsilon in EPSILONS:
            rows.append(run_setting(cohort_site, streams, epsilon, args))
            r = rows[-1]
            print(f"# {r['streams']} eps={r['epsilon']} sigma={r['sigma']} {r['pooled']} ({r['seconds']} s)",
                  file=sys.stderr, flush=True)
    body = markdown(rows, cohort_summary(), args)
    print(body)
    if args.write:
        write_section("utility", "Utility of patient-level DP on the phantom cohort (issue 3)", body)


if __name__ == "__main__":
    main()
