"""Reading the seizure on the clinician's times against its movement span: FOS/TCS balanced accuracy on long videos.

`predict` and the report decide FOS against TCS from the snippets of the seizure itself and 1 s either side
(common/records/activity.py, `seizure_snippets`): the clinician's seizure times when the record has them (a
manifest's onset_s and offset_s, `predict --onset-s/--offset-s`), else the movement span found in the video. This
bench classifies every FOS and TCS of long-clip cohorts (the seizure with 3-12 s before and 3-15 s after it) both
ways with each model, and gives the balanced accuracy of each reading and the paired difference over the held-out
cohorts together (percentile bootstrap, 2000 draws). Design cohorts (where the reading was chosen) are scored, not
pooled.

Usage:
  python bench/utility_cohorts.py --only explain-dev-usual explain-unusual-4   # COHORTS
  python bench/bench_seizure_times.py --model "federated DP=CKPT" [--model ...] --cohort COHORTS/explain-unusual-4 \\
      [--design COHORTS/explain-dev-usual] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explain import cohort  # noqa: E402
from report import cohort_arguments, write_section  # noqa: E402

USUAL = ("FOS", "TCS")
READINGS = ("span", "times")


def probabilities(checkpoint: Any, records: list[Any]) -> dict[str, np.ndarray]:
    """reading -> [N, 2] calibrated (FOS, TCS) probabilities of the records, read on the movement span (the times
    taken away) and on the clinician's times."""
    from semiofed.client.training.predict import predict_record

    out = {}
    for reading in READINGS:
        rows = []
        for record in records:
            read = record if reading == "times" else replace(record, onset_s=None, offset_s=None)
            p = predict_record(checkpoint, read).probabilities
            rows.append([p["FOS"], p["TCS"]])
        out[reading] = np.asarray(rows)
    return out


def measure(models: dict[str, Path], cohorts: list[Path], design: set[str]) -> dict[str, Any]:
    """Balanced accuracy per model, cohort and reading, and the paired difference over the held-out cohorts."""
    from semiofed.common.learning.checkpoint import load_checkpoint
    from semiofed.common.learning.metrics import classification_report, paired_difference

    records = {c.name: [r for r, _ in cohort(c) if r.label in USUAL] for c in cohorts}
    results: dict[str, Any] = {}
    for name, path in models.items():
        checkpoint = load_checkpoint(path)
        per: dict[str, Any] = {}
        pooled_y, pooled = [], {reading: [] for reading in READINGS}
        for cohort_name, recs in records.items():
            y = np.array([USUAL.index(r.label) for r in recs])
            probs = probabilities(checkpoint, recs)
            per[cohort_name] = {reading: classification_report(y, probs[reading])["balanced_accuracy"]
                                for reading in READINGS} | {"seizures": len(recs)}
            if cohort_name not in design:
                pooled_y.append(y)
                for reading in READINGS:
                    pooled[reading].append(probs[reading])
        y = np.concatenate(pooled_y)
        a, b = np.concatenate(pooled["times"]), np.concatenate(pooled["span"])
        results[name] = {"cohorts": per, "held_out": {
            "seizures": len(y), **{reading: classification_report(y, np.concatenate(pooled[reading]))["balanced_accuracy"]
                                   for reading in READINGS},
            "times_minus_span": paired_difference(y, a, b)["balanced_accuracy"]}}
    return results


def table(results: dict[str, Any], design: set[str]) -> str:
    """Markdown: one row per model; per cohort 'span -> times', then the held-out cohorts together."""
    names = list(next(iter(results.values()))["cohorts"])
    head = ["model"] + [f"{c}{' (design)' if c in design else ''}" for c in names] + ["held-out together",
                                                                                     "times - span (95% CI)"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for model, r in results.items():
        cells = [f"{r['cohorts'][c]['span']:.2f} -> {r['cohorts'][c]['times']:.2f}" for c in names]
        h = r["held_out"]
        d = h["times_minus_span"]
        cells += [f"{h['span']:.2f} -> {h['times']:.2f} ({h['seizures']})",
                  f"{d['difference']:+.2f} ({d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f})"]
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT",
                        help="a calibrated checkpoint, named in its row; repeatable")
    parser.add_argument("--cohort", type=Path, nargs="+", required=True, help="held-out long-clip cohort folders")
    parser.add_argument("--design", type=Path, nargs="*", default=[], help="design cohort folders: scored, not pooled")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            raise SystemExit(f"--model {item!r}: give NAME=CHECKPOINT_DIRECTORY")
        models[name] = Path(path)
    design = {folder.name for folder in args.design}
    results = measure(models, [*args.design, *args.cohort], design)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    body = ("`python bench/bench_seizure_times.py " + " ".join(f'--model "{m}=CKPT"' for m in models)
            + cohort_arguments(args.cohort, args.design) + "` (COHORTS: `python bench/utility_cohorts.py`; the models: the demos' calibrated checkpoints). FOS "
            "against TCS, balanced accuracy of every FOS and TCS of long-clip cohorts (3-12 s of video before the "
            "seizure, 3-15 s after it), the seizure read on its movement span -> on the clinician's times, 1 s "
            "either side each (common/records/activity.py, `seizure_snippets`); the difference is paired on the same "
            "seizures of the held-out cohorts, percentile bootstrap (2000 draws).\n\n" + table(results, design))
    print(body)
    if args.write:
        print("written to", write_section("seizure-times", "Reading the seizure on the clinician's times (issue 17)",
                                          body))


if __name__ == "__main__":
    main()
