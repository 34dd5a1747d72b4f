"""The unusual-seizure score on held-out semiologies, against public references of different sizes (issue 17).

The unusual score (common/learning/unusual.py) is the mean over a seizure's windows of their shrunk Mahalanobis
distance from the windows of a reference of public seizures. This bench scores cohorts (half of a semiology no model
trains on: hypermotor, non-epileptic) against references of different sizes and gives the AUROC of telling the
unusual seizures from the usual ones (FOS, TCS), overall and per semiology, with 95% bootstrap intervals, and the
share flagged at the reference's own 95th percentile; per cohort, and over the held-out cohorts together (design
cohorts, on which the score's form was chosen, are scored but not pooled). Each seizure is read twice: on its
clinician's times (as `site show` and the report read a prepared record) and on its movement span alone (as
`predict` reads a video). No model is involved: the score reads the record alone.

Usage:
  python bench/utility_cohorts.py --only explain-unusual-2 explain-reference explain-reference-72   # COHORTS
  python bench/bench_unusual_reference.py --reference COHORTS/explain-reference COHORTS/explain-reference-72 \\
      --cohort COHORTS/explain-unusual-4 COHORTS/explain-unusual-5 [--design COHORTS/explain-unusual-dev] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explain import cohort  # noqa: E402
from report import cohort_arguments, write_section  # noqa: E402

USUAL = ("FOS", "TCS")


def reference_store(cohort_dir: Path) -> Path:
    """The one site store of a reference cohort folder."""
    stores = sorted(d for d in (cohort_dir / "sites").iterdir() if (d / "site.json").is_file())
    if len(stores) != 1:
        raise SystemExit(f"{cohort_dir}: a reference cohort has one site store, found {len(stores)}")
    return stores[0]


def auroc_with_interval(unusual: np.ndarray, usual: np.ndarray) -> tuple[float, list[float]]:
    """AUROC of the scores of unusual against usual seizures, and its 95% bootstrap interval."""
    from semiofed.common.learning.metrics import _binary_auroc, bootstrap_intervals

    y = np.concatenate([np.ones(len(unusual), dtype=int), np.zeros(len(usual), dtype=int)])
    s = np.concatenate([unusual, usual])
    rank = (np.argsort(np.argsort(s)) + 0.5) / len(s)  # scores as probabilities in (0, 1), in the same order
    probs = np.stack([1.0 - rank, rank], axis=1)  # the AUROC reads only this order
    return _binary_auroc(y, s), bootstrap_intervals(y, probs, n_boot=2000, seed=0)["auroc"]


READINGS = ("times", "span")  # the seizure on its clinician's times (a prepared record); on its movement span (a video
# given to `predict`, which has no times)


def cohort_windows(folder: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(label, {reading: `seizure_windows`}) of every seizure of a held-out cohort, read once for every reference."""
    from semiofed.common.learning.unusual import seizure_windows
    from semiofed.common.records.activity import record_activity

    out = []
    for record, _ in cohort(folder):
        activity = record_activity(record)  # the windows of both readings, computed once
        out.append((record.label, {"times": seizure_windows(record, activity),
                                   "span": seizure_windows(record, activity, times=False)}))
    return out


def figures_of(scored: list[tuple[str, float]], threshold: float) -> dict[str, Any]:
    """AUROC with its interval and flag rates, overall and per unusual semiology, of (label, score) pairs."""
    usual = np.array([s for label, s in scored if label in USUAL])
    figures: dict[str, Any] = {}
    for name in ("all", "hypermotor", "pnes"):
        unusual = np.array([s for label, s in scored if label not in USUAL and name in ("all", label)])
        value, interval = auroc_with_interval(unusual, usual)
        figures[name] = {"n": len(unusual), "auroc": value, "ci95": interval,
                         "flagged": float(np.mean(unusual > threshold))}
    figures["usual"] = {"n": len(usual), "flagged": float(np.mean(usual > threshold))}
    return figures


def measure(reference: Path, cohorts: dict[str, list[tuple[str, dict[str, np.ndarray]]]],
            design: set[str]) -> dict[str, Any]:
    """Figures of one reference over the cohorts (name -> `cohort_windows`), each read both ways, and over the
    held-out cohorts (those not in `design`) together."""
    from semiofed.client.training.calibrate import reference_records
    from semiofed.common.learning.unusual import fit_unusual_on_records

    model = fit_unusual_on_records(reference_records(reference_store(reference), USUAL))
    out: dict[str, Any] = {"reference": reference.name, "seizures": len(model.reference_scores), "cohorts": {},
                           "held_out": {}}
    for reading in READINGS:
        pooled = []
        for cohort_name, seizures in cohorts.items():
            scored = [(label, model.score(windows[reading])) for label, windows in seizures]
            out["cohorts"].setdefault(cohort_name, {})[reading] = figures_of(scored, model.threshold)
            if cohort_name not in design:
                pooled += [(label, s, cohort_name) for label, s in scored]
        if pooled and len(cohorts) - len(design) > 1:
            out["held_out"][reading] = figures_of([(label, s) for label, s, _ in pooled], model.threshold)
            out["held_out"]["cohorts"] = sorted({c for _, _, c in pooled})
    return out


def _cells(f: dict[str, Any]) -> str:
    cells = [f"{f[k]['auroc']:.2f} ({f[k]['ci95'][0]:.2f}-{f[k]['ci95'][1]:.2f}) of {f[k]['n']}"
             for k in ("all", "hypermotor", "pnes")]
    return " | ".join(cells) + f" | {f['all']['flagged']:.0%} / {f['usual']['flagged']:.0%} |"


def table(results: list[dict[str, Any]], design: set[str]) -> str:
    """Markdown rows: one per reference and cohort, read on the seizure times, then the held-out cohorts together;
    and the AUROC read on the movement span alone."""
    rows = ["| reference (public seizures) | cohort | AUROC, all unusual (95% CI) | hypermotor | non-epileptic | "
            "flagged: unusual / usual |", "|---|---|---|---|---|---:|"]
    for r in results:
        for name, f in r["cohorts"].items():
            kind = "design" if name in design else "held out"
            rows.append(f"| {r['reference']} ({r['seizures']}) | {name} ({kind}; {f['times']['usual']['n']} usual) | "
                        + _cells(f["times"]))
        if "times" in r["held_out"]:
            h = r["held_out"]
            rows.append(f"| {r['reference']} ({r['seizures']}) | **held-out cohorts together** ({len(h['cohorts'])}; "
                        f"{h['times']['usual']['n']} usual) | " + _cells(h["times"]))
    span = ["| reference | " + " | ".join(name for name in results[0]["cohorts"])
            + (" | held-out together |" if results[0]["held_out"] else " |"),
            "|---|" + "---|" * (len(results[0]["cohorts"]) + bool(results[0]["held_out"]))]
    for r in results:
        cells = [f"{f['span']['all']['auroc']:.2f}" for f in r["cohorts"].values()]
        if r["held_out"]:
            h = r["held_out"]["span"]["all"]
            cells.append(f"{h['auroc']:.2f} ({h['ci95'][0]:.2f}-{h['ci95'][1]:.2f})")
        span.append(f"| {r['reference']} ({r['seizures']}) | " + " | ".join(cells) + " |")
    return ("\n".join(rows) + "\n\nThe same seizures read on their movement span alone (as `predict` reads a video, "
            "which has no clinician's times), AUROC of all unusual seizures:\n\n" + "\n".join(span))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, nargs="+", required=True, help="reference cohort folders")
    parser.add_argument("--cohort", type=Path, nargs="+", required=True, help="held-out cohort folders")
    parser.add_argument("--design", type=Path, nargs="*", default=[],
                        help="design cohort folders (the score's form was chosen on them): scored, not pooled")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    design = {folder.name for folder in args.design}
    cohorts = {folder.name: cohort_windows(folder) for folder in [*args.cohort, *args.design]}
    results = [measure(reference, cohorts, design) for reference in args.reference]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    body = ("`python bench/bench_unusual_reference.py --reference "
            + " ".join(f"COHORTS/{r.name}" for r in args.reference) + cohort_arguments(args.cohort, args.design)
            + "` (COHORTS: `python bench/utility_cohorts.py`). The unusual-seizure score "
            "(common/learning/unusual.py: the mean over the seizure's windows of their shrunk Mahalanobis distance "
            "per descriptor from the windows of the reference label it is closest to, 29 motion descriptors; the "
            "seizure read on its clinician's times, the reference on its movement span) fitted on each public "
            "reference (FOS and TCS, the long clips), against cohorts whose unusual seizures are of semiologies no "
            "model or reference has seen; flag above the reference's own leave-one-out 95th percentile. 95% bootstrap "
            "intervals (2000 draws).\n\n" + table(results, design))
    print(body)
    if args.write:
        print("written to", write_section("unusual-reference", "The unusual-seizure score on held-out semiologies "
                                          "(issue 17)", body))


if __name__ == "__main__":
    main()
