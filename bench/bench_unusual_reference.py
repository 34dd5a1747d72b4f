"""The unusual-seizure score on held-out semiologies, against public references of different sizes (issue 17).

The unusual score (common/learning/unusual.py) is the mean over a seizure's windows of their shrunk Mahalanobis
distance from the windows of a reference of public seizures. This bench scores held-out cohorts (half of a
semiology no model trains on: hypermotor, non-epileptic) against references of different sizes and gives the AUROC of telling the
unusual seizures from the usual ones (FOS, TCS), overall and per semiology, with 95% bootstrap intervals, and the
share flagged at the reference's own 95th percentile. No model is involved: the score reads the record alone.

Usage:
  python bench/utility_cohorts.py --only explain-unusual-2 explain-reference explain-reference-72   # COHORTS
  python bench/bench_unusual_reference.py --reference COHORTS/explain-reference COHORTS/explain-reference-72 \\
      --cohort COHORTS/explain-unusual-2 [--write]
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
from report import write_section  # noqa: E402

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


def cohort_windows(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(label, `seizure_windows`) of every seizure of a held-out cohort, read once for every reference."""
    from semiofed.common.learning.unusual import seizure_windows

    return [(record.label, seizure_windows(record)) for record, _ in cohort(folder)]


def measure(reference: Path, cohorts: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, Any]:
    """Figures of one reference over the cohorts (name -> `cohort_windows`)."""
    from semiofed.client.training.calibrate import reference_records
    from semiofed.common.learning.unusual import fit_unusual_on_records

    model = fit_unusual_on_records(reference_records(reference_store(reference), USUAL))
    out: dict[str, Any] = {"reference": reference.name, "seizures": len(model.reference_scores), "cohorts": {}}
    for cohort_name, seizures in cohorts.items():
        scored = [(label, model.score(windows)) for label, windows in seizures]
        usual = np.array([s for label, s in scored if label in USUAL])
        figures: dict[str, Any] = {}
        for name in ("all", "hypermotor", "pnes"):
            unusual = np.array([s for label, s in scored if label not in USUAL and name in ("all", label)])
            value, interval = auroc_with_interval(unusual, usual)
            figures[name] = {"n": len(unusual), "auroc": value, "ci95": interval,
                             "flagged": float(np.mean(unusual > model.threshold))}
        figures["usual"] = {"n": len(usual), "flagged": float(np.mean(usual > model.threshold))}
        out["cohorts"][cohort_name] = figures
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown rows: one per reference and cohort."""
    rows = ["| reference (public seizures) | held-out cohort | AUROC, all unusual (95% CI) | hypermotor | non-epileptic | "
            "flagged: unusual / usual |", "|---|---|---|---|---|---:|"]
    for r in results:
        for name, f in r["cohorts"].items():
            cells = [f"{f[k]['auroc']:.2f} ({f[k]['ci95'][0]:.2f}-{f[k]['ci95'][1]:.2f}) of {f[k]['n']}"
                     for k in ("all", "hypermotor", "pnes")]
            rows.append(f"| {r['reference']} ({r['seizures']}) | {name} ({f['usual']['n']} usual) | " + " | ".join(cells)
                        + f" | {f['all']['flagged']:.0%} / {f['usual']['flagged']:.0%} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, nargs="+", required=True, help="reference cohort folders")
    parser.add_argument("--cohort", type=Path, nargs="+", required=True, help="held-out cohort folders")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    cohorts = {folder.name: cohort_windows(folder) for folder in args.cohort}
    results = [measure(reference, cohorts) for reference in args.reference]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    body = ("`python bench/bench_unusual_reference.py --reference "
            + " ".join(f"COHORTS/{r.name}" for r in args.reference) + " --cohort "
            + " ".join(f"COHORTS/{c.name}" for c in args.cohort) + "` (COHORTS: `python bench/utility_cohorts.py`). "
            "The unusual-seizure score (the mean over the seizure's windows in its movement span of their shrunk "
            "Mahalanobis distance from the reference's windows, 32 descriptors) fitted on each public reference (FOS "
            "and TCS, the long clips), against held-out cohorts whose unusual seizures are of semiologies no model or "
            "reference has seen; flag above the reference's own "
            "leave-one-out 95th percentile. 95% bootstrap intervals (2000 draws).\n\n" + table(results))
    print(body)
    if args.write:
        print("written to", write_section("unusual-reference", "The unusual-seizure score: windows against pooled "
                                          "seizures (issue 17)", body))


if __name__ == "__main__":
    main()
