"""Why the region attributions of the FOS/TCS decision do not name the seizing side often enough (issue 17), and what
a side output trained on side labels would reach.

Usage:
  python bench/bench_side_evidence.py rests --demo DEMO --cohort COHORTS/explain-lateral [--write]
  python bench/bench_side_evidence.py labels --fit DEMO COHORTS/explain-lateral-dev --test COHORTS/explain-lateral-3 [--write]

`rests`: for each lateralised focal seizure of the cohort (one side's limb signs only; bench/bench_explain.py's
`seizing_side`), the seizing arm and then the quiet arm are held still (common/records/regions.py, as the
attributions do) and the change of every descriptor the linear model reads is weighed by its FOS-against-TCS weight
(bench/bench_explain.py's `decision_weights`). The seizure logits of the linear model are the mean of its snippet
logits, so the fall of the seizure's FOS-against-TCS log-odds is exactly the sum of these parts: the table says which
descriptors carry each arm's share of the decision.

`labels`: what the record says about the side when side labels exist. Per seizure, over its movement span
(common/records/activity.py), the left-minus-right difference of each sided region's log energy and rhythm (the
body-region stream, common/records/region_motion.py) and of the wrist's height above its shoulder (posture: a
dystonic hand is held up, not moved). A logistic model on these differences, with no intercept (a mirrored seizure
gets the mirrored answer), is fitted on the --fit folders' lateralised focal seizures (non-DP: this measures what the
labels would allow, not a federated model) and scored on the --test folders'; next to it, the rule with nothing
fitted: the side whose arm has the higher mean log energy.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explain import checkpoints, cohort, decision_weights, seizing_side  # noqa: E402
from report import write_section  # noqa: E402

from semiofed.common.learning.public_model import side_logistic_weights  # noqa: E402
from semiofed.common.records.side import SIDED  # noqa: E402

FEATURES = tuple(f"{k} (left - right)" for k in SIDED) + ("wrist height (left - right)",)


# ---------------------------------------------------------------- what the decision rests on

def descriptor_shares(checkpoint: Any, pairs: list[tuple[Any, dict]]) -> dict[str, Any]:
    """Per descriptor: mean part of the fall of the FOS-against-TCS log-odds when the seizing arm, then the quiet
    arm, is held still; and how often the seizing arm's total fall is the larger in size."""
    from semiofed.common.records.activity import seizure_snippets
    from semiofed.common.records.features import record_inputs
    from semiofed.common.records.regions import held_still, noise_floor

    weights = decision_weights(checkpoint)
    if weights is None:
        raise SystemExit("the checkpoint is not a linear keypoint model; `rests` decomposes only those")
    config = checkpoint.config
    columns = list(config.keypoint_read)
    w = np.array(list(weights.values()))
    seizing, quiet, larger = [], [], 0
    for record, truth in pairs:
        side = seizing_side(truth)
        if side is None:
            continue
        read = seizure_snippets(record)
        floor = noise_floor(record.arrays)

        def mean_inputs(arrays: Any) -> np.ndarray:
            return record_inputs(replace(record, arrays=arrays), config.streams)[read][:, columns].mean(axis=0)

        x = mean_inputs(record.arrays)
        other = "right" if side == "left" else "left"
        part_s = w * (x - mean_inputs(held_still(record.arrays, f"{side}_arm", floor=floor)))
        part_q = w * (x - mean_inputs(held_still(record.arrays, f"{other}_arm", floor=floor)))
        seizing.append(part_s)
        quiet.append(part_q)
        larger += abs(part_s.sum()) > abs(part_q.sum())
    seizing_arr, quiet_arr = np.array(seizing), np.array(quiet)
    return {"names": list(weights), "weights": w.tolist(), "seizures": len(seizing),
            "seizing": seizing_arr.mean(axis=0).tolist(), "quiet": quiet_arr.mean(axis=0).tolist(),
            "seizing_abs_total": float(np.abs(seizing_arr.sum(axis=1)).mean()),
            "quiet_abs_total": float(np.abs(quiet_arr.sum(axis=1)).mean()),
            "seizing_larger": larger}


def rests_table(shares: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per descriptor, the seizing and quiet arm's parts for each model."""
    models = list(shares)
    head = "| descriptor | " + " | ".join(f"{m}: weight | seizing arm still | quiet arm still" for m in models) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(models)]
    first = shares[models[0]]
    for i, name in enumerate(first["names"]):
        cells = [f"{s['weights'][i]:+.2f} | {s['seizing'][i]:+.2f} | {s['quiet'][i]:+.2f}" for s in shares.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **mean size of the whole fall** | " + " | ".join(
        f"| {s['seizing_abs_total']:.2f} | {s['quiet_abs_total']:.2f}" for s in shares.values()) + " |")
    lines.append("| **seizing arm's fall the larger** | " + " | ".join(
        f"| {s['seizing_larger']} of {s['seizures']} |" for s in shares.values()) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- what side labels would allow

def _wrist_heights(record: Any, lo: float, hi: float) -> list[float]:
    """Median height of each wrist above its shoulder along the body axis, in torso lengths, frames lo..hi s
    (NaN where the wrist is seen in fewer than 5 frames; common/records/side.py's per-frame heights)."""
    from semiofed.common.records.side import wrist_heights

    times = np.asarray(record.arrays["frame_times"], dtype=np.float64)
    heights = wrist_heights(record.arrays, record.frame_size)[(times >= lo) & (times <= hi)]
    return [float(np.nanmedian(h)) if np.isfinite(h).sum() >= 5 else float("nan") for h in heights.T]


def sided_features(record: Any) -> np.ndarray:
    """[len(FEATURES)] left-minus-right differences over the record's movement span (0 where a side is not seen)."""
    from semiofed.common.records.activity import record_activity
    from semiofed.common.records.region_motion import REGION_STREAM_NAMES, region_window_features

    activity = record_activity(record)
    lo, hi = (activity.start_s, activity.end_s) if activity.start_s is not None else (-np.inf, np.inf)
    feats, bounds = region_window_features(record.arrays, frame_size=record.frame_size)
    mid = bounds.astype(np.float64).mean(axis=1)
    inside = (mid >= lo) & (mid <= hi)
    inside = inside if inside.any() else np.ones_like(inside)
    out = [float(np.mean(feats[inside, REGION_STREAM_NAMES.index(f"left_{k}")]
                         - feats[inside, REGION_STREAM_NAMES.index(f"right_{k}")])) for k in SIDED]
    left, right = _wrist_heights(record, lo, hi)
    out.append(0.0 if np.isnan(left) or np.isnan(right) else left - right)
    return np.asarray(out)


def side_data(folders: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F], 1 for a left-sided seizure) of the folders' lateralised focal seizures."""
    x, y = [], []
    for folder in folders:
        for record, truth in cohort(folder):
            side = seizing_side(truth)
            if side is not None:
                x.append(sided_features(record))
                y.append(1.0 if side == "left" else 0.0)
    return np.asarray(x).reshape(-1, len(FEATURES)), np.asarray(y)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def folder_name(folder: Path) -> str:
    """How a folder is named in the docs: DEMO for a `semiofed demo` output, else the cohort's name."""
    return "DEMO" if (folder / "report.json").is_file() else folder.name


def labels_report(fit: list[Path], test: list[Path]) -> tuple[str, dict[str, Any]]:
    """Markdown and figures: the fitted side model and the energy rule on each test folder."""
    x, y = side_data(fit)
    w = side_logistic_weights(x, y)
    figures: dict[str, Any] = {"fit": [str(f) for f in fit], "fit_seizures": len(y),
                               "weights": dict(zip(FEATURES, w.tolist())), "test": {}}
    lines = ["| test cohort | lateralised focal seizures | side model (fitted, 7 differences) | rule: the arm with the "
             "higher mean log energy |", "|---|---:|---:|---:|"]
    for folder in test:
        xt, yt = side_data([folder])
        model = int(((xt @ w > 0) == (yt == 1)).sum())
        rule = int(((xt[:, 0] > 0) == (yt == 1)).sum())
        n = len(yt)
        figures["test"][folder.name] = {"seizures": n, "side_model": model, "energy_rule": rule}
        (m_lo, m_hi), (r_lo, r_hi) = wilson(model, n), wilson(rule, n)
        lines.append(f"| {folder.name} | {n} | {model / n:.0%} ({m_lo:.0%}-{m_hi:.0%}) | "
                     f"{rule / n:.0%} ({r_lo:.0%}-{r_hi:.0%}) |")
    weights = ", ".join(f"{name} {v:+.2f}" for name, v in zip(FEATURES, w))
    lines.append("")
    lines.append(f"Fitted on {len(y)} lateralised focal seizures ({', '.join(folder_name(f) for f in fit)}); weights (per "
                 f"unit of each difference, positive: left): {weights}.")
    return "\n".join(lines), figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    rests = sub.add_parser("rests", help="which descriptors carry each arm's share of the FOS/TCS decision")
    rests.add_argument("--demo", type=Path, required=True, help="output folder of `semiofed demo`")
    rests.add_argument("--cohort", type=Path, required=True, help="a bench/utility_cohorts.py cohort folder")
    rests.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    labels = sub.add_parser("labels", help="what a side output fitted on side labels would reach")
    labels.add_argument("--fit", type=Path, nargs="+", required=True, help="folders with sites/ and videos/*/truth")
    labels.add_argument("--test", type=Path, nargs="+", required=True, help="held-out cohort folders")
    labels.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    if args.part == "rests":
        pairs = cohort(args.cohort)
        shares = {name: descriptor_shares(ckpt, pairs) for name, ckpt in checkpoints(args.demo).items()}
        body = (f"`python bench/bench_side_evidence.py rests --demo DEMO --cohort COHORTS/{args.cohort.name}` (DEMO: "
                "`semiofed demo`). Each lateralised focal seizure's seizing arm, then its quiet arm, held still as the "
                "attributions do; per descriptor, the mean part of the fall of the seizure's FOS-against-TCS log-odds "
                "(weight x fall of the descriptor's mean over the snippets read; positive: holding the arm still "
                "lowers the odds of FOS).\n\n" + rests_table(shares))
        print(body)
        if args.write:
            print("written to", write_section("side-rests", "What the FOS/TCS decision rests on: the seizing arm "
                                              "against the quiet arm (issue 17)", body))
        return
    table, _figures = labels_report(args.fit, args.test)
    body = ("`python bench/bench_side_evidence.py labels --fit " + " ".join(folder_name(f) for f in args.fit) + " --test "
            + " ".join(f.name for f in args.test) + "` (COHORTS: bench/utility_cohorts.py). Non-DP: what side labels "
            "would allow, not a federated model. 95% Wilson intervals.\n\n" + table)
    print(body)
    if args.write:
        print("written to", write_section("side-labels", "What side labels would allow: a side output on the "
                                          "record's sided movement and posture (issue 17)", body))


if __name__ == "__main__":
    main()
