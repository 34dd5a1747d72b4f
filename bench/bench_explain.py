"""What a clinician reads, measured on unseen phantom seizures (issue 17): generalisation time, phases per snippet,
the lateralisation of region attributions and of the side output, and the unusual-seizure score, for the federated DP model next to the
centralised non-DP one.

Usage:
  python bench/utility_cohorts.py --only explain-p40          # the held-out cohort (seed 7201, never tuned on)
  semiofed demo --out DEMO                                     # the federated DP model, centralised model, reference
  python bench/bench_explain.py --demo DEMO --cohort COHORTS/explain-p40 [--write]

Models: DEMO's calibrated federated model (SecAgg+, patient-level DP at each site) and its centralised non-private
model (DEMO/centralised; trained here the demo's way if DEMO predates it), both calibrated on the demo's public
reference seizures, which also give the unusual-seizure reference. Every seizure of the cohort is assessed as
`semiofed predict` does (client/training/predict.py: `assess_record`). Ground truth: the phantom's truth/*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

# Unilateral limb signs: the seizing side is a limb's side. Head version and facial clonus lateralise too, but to the
# head, which is one region without a side; they count in the wider figure.
LIMB_SIGNS = ("clonic_arm", "hemiclonic", "dystonic_hand")
LATERAL_SIGNS = LIMB_SIGNS + ("clonic_face", "head_version")


def _null_progress(_description: str, _total: int) -> Any:
    return contextlib.nullcontext(lambda *_a, **_k: None)


def checkpoints(demo: Path, unusual_reference: Path | None = None) -> dict[str, Any]:
    """The demo's federated DP and centralised non-DP checkpoints, each with the unusual-seizure reference (fitted on
    `unusual_reference`, a store of public reference seizures made like the cohort's clips; default the demo's)."""
    from semiofed.client.training.calibrate import reference_records
    from semiofed.common.learning.checkpoint import META_FILE, save_checkpoint
    from semiofed.common.learning.unusual import fit_unusual_on_records
    from semiofed.server.demo import DemoConfig, centralised_baseline, site_tasks

    report = json.loads((demo / "report.json").read_text())
    config = DemoConfig(out=demo, seed=report["config"]["seed"], sites=report["config"]["sites"])
    fed = config.federation()
    records = reference_records(demo / "reference-site", fed.labels)
    unusual = fit_unusual_on_records(reference_records(unusual_reference, fed.labels) if unusual_reference
                                     else records).to_json()
    central_dir = demo / "centralised"
    if not (central_dir / META_FILE).is_file():  # a demo from before the centralised checkpoint was kept
        from semiofed.client.training.local import group_patients

        reference = [s for p in group_patients(records, fed.labels, fed.streams) for s in p.seizures]
        site_dirs = [Path(s["site_dir"]) for s in report["sites"]]
        central, model = centralised_baseline(site_tasks(site_dirs, fed), fed, reference, _null_progress)
        save_checkpoint(central_dir, model, {"temperature": 1.0, "calibration": central["calibration"],
                                             "unusual": unusual, "trained": "centralised, no DP"})
    return {name: with_unusual(path, unusual)
            for name, path in (("federated DP", Path(report["final_checkpoint"])), ("centralised non-DP", central_dir))}


def with_unusual(path: Path, unusual: dict[str, Any]) -> Any:
    """The checkpoint at `path`, with this unusual-seizure reference (a copy beside it when it has another)."""
    from semiofed.common.learning.checkpoint import CHECKPOINT_OWN_KEYS, load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.meta.get("unusual") == unusual:
        return ckpt
    meta = {k: v for k, v in ckpt.meta.items() if k not in CHECKPOINT_OWN_KEYS} | {"unusual": unusual}
    return load_checkpoint(save_checkpoint(path.parent / (path.name + "-unusual"), ckpt.model, meta))


def cohort(cohort_dir: Path) -> list[tuple[Any, dict]]:
    """(record, truth JSON) of every prepared seizure of the cohort, matched by label, clinical times and length."""
    from semiofed.client.site import open_site
    from semiofed.client.training.local import load_site_records
    from semiofed.phantom.semiology import LABELS, UNUSUAL_LABELS

    pairs = []
    for site_dir in sorted((cohort_dir / "sites").iterdir()):
        truths = [json.loads(p.read_text()) for p in sorted((cohort_dir / "videos" / site_dir.name / "truth").glob("*.json"))]
        for record in load_site_records(open_site(site_dir), LABELS + UNUSUAL_LABELS):
            match = [t for t in truths if t["label"] == record.label and abs(t["onset_s"] - record.onset_s) < 0.006
                     and abs(t["offset_s"] - record.offset_s) < 0.006
                     and abs(t["num_frames"] / t["fps"] - record.duration_s) < 0.15]
            if len(match) != 1:
                raise SystemExit(f"record {record.record_id}: {len(match)} truth files match its label and times")
            pairs.append((record, match[0]))
    return pairs


def seizing_side(truth: dict, signs: tuple[str, ...] = LIMB_SIGNS) -> str | None:
    """The side of a focal seizure's lateralised signs (of `signs`) when they agree, else None."""
    if truth["label"] != "FOS":
        return None
    sides = {p["side"] for p in truth["phases"] if p["name"] in signs and p.get("side")}
    return sides.pop() if len(sides) == 1 else None


def more_moving_arm(record: Any, truth: dict) -> str | None:
    """Model-free: the side ("left"/"right") of the arm that moves more in most windows of the seizure (truth onset to
    offset; the region stream's per-side arm energy, common/records/region_motion.py), None when no arm is seen."""
    from semiofed.common.records.region_motion import REGION_STREAM_NAMES, region_window_features

    feats, bounds = region_window_features(record.arrays, frame_size=record.frame_size)
    mid = bounds.astype(np.float64).mean(axis=1)
    inside = (mid >= truth["onset_s"]) & (mid <= truth["offset_s"])
    left = feats[inside, REGION_STREAM_NAMES.index("left_arm_energy")]
    right = feats[inside, REGION_STREAM_NAMES.index("right_arm_energy")]
    seen = (left != 0) | (right != 0)  # an arm seen in under MIN_COVERAGE of a window is 0
    if not seen.any():
        return None
    return "right" if np.mean(right[seen] > left[seen]) > 0.5 else "left"


def more_moving_arm_on_side(pairs: list[tuple[Any, dict]]) -> tuple[int, int]:
    """(lateralised focal seizures whose record's more-moving arm is on the seizing side, lateralised focal seizures):
    how often naming the side by the arm that moves more would be right, from the record alone (a model can do
    better or worse: it also reads the legs and the head, and what the quiet arm does)."""
    hits = n = 0
    for record, truth in pairs:
        side = seizing_side(truth)
        if side is not None:
            n += 1
            hits += more_moving_arm(record, truth) == side
    return hits, n


def evaluate(checkpoint: Any, pairs: list[tuple[Any, dict]]) -> dict[str, Any]:
    from semiofed.client.training.evolution import PHASES, truth_phases
    from semiofed.client.training.predict import assess_record
    from semiofed.common.learning.metrics import _binary_auroc
    from semiofed.phantom.semiology import UNUSUAL_LABELS

    gen_err, gen_found, tcs = [], 0, 0
    onset_err = []
    phase_hits = phase_total = 0
    confusion = np.zeros((len(PHASES), len(PHASES)), dtype=np.int64)
    lateral, lateral_pos, lateral_n = 0, 0, 0
    side_named, side_top, side_n = 0, 0, 0
    wide, wide_n = 0, 0
    scores, unusual_y, flags = [], [], []
    correct, usual = [], []
    seconds = []
    for record, truth in pairs:
        t0 = time.monotonic()
        a = assess_record(checkpoint, record)
        seconds.append(time.monotonic() - t0)
        # no measurable movement (no pose): sent for review, the most unusual of all
        scores.append(float("inf") if a.unusual["score"] is None else float(a.unusual["score"]))
        flags.append(bool(a.unusual["flag"]))
        unusual_y.append(record.label in UNUSUAL_LABELS)
        if record.label in UNUSUAL_LABELS:
            continue
        correct.append(a.prediction.predicted == record.label)
        usual.append(record.label)
        if truth["onset_s"] is not None and a.evolution.onset_s is not None:
            onset_err.append(abs(a.evolution.onset_s - truth["onset_s"]))
        if record.label == "TCS":
            tcs += 1
            if a.evolution.generalisation_s is not None:
                gen_found += 1
                gen_err.append(abs(a.evolution.generalisation_s - truth["generalization_s"]))
        want = truth_phases(a.evolution.times, truth)
        for got, true in zip(a.evolution.phases, want):
            confusion[PHASES.index(true), PHASES.index(got)] += 1
            phase_hits += got == true
            phase_total += 1
        wide_side = seizing_side(truth, LATERAL_SIGNS)
        if wide_side is not None:
            wide_n += 1
            wide += bool(a.explanation.top_region and a.explanation.top_region.startswith(wide_side))
        side = seizing_side(truth)
        if side is not None:
            lateral_n += 1
            top = a.explanation.top_region
            lateral += bool(top and top.startswith(side))
            read = {k: v for k, v in a.explanation.direction.items() if a.explanation.region_read.get(k)}
            best = max(read, key=read.get) if read else None
            lateral_pos += bool(best and best.startswith(side))
            named = a.explanation.side
            if named is not None:
                side_n += 1
                side_named += named.side == side
                side_top += bool(named.top_region and named.top_region.startswith(side))
    y, s = np.asarray(unusual_y, dtype=int), np.asarray(scores)
    usual_arr = np.asarray(usual)
    recalls = [float(np.mean(np.asarray(correct)[usual_arr == c])) for c in ("FOS", "TCS") if (usual_arr == c).any()]
    per_label = {}
    for label in UNUSUAL_LABELS:
        keep = np.array([r.label == label for r, _ in pairs]) | (y == 0)
        if (y[keep] == 1).any():
            per_label[label] = _binary_auroc(y[keep], s[keep])
    return {
        "seizures": len(pairs), "usual": int((y == 0).sum()), "unusual": int(y.sum()),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "tcs": tcs, "generalisation_found": gen_found,
        "generalisation_median_abs_error_s": float(np.median(gen_err)) if gen_err else float("nan"),
        "onset_median_abs_error_s": float(np.median(onset_err)) if onset_err else float("nan"),
        "phase_accuracy": phase_hits / max(phase_total, 1), "phase_confusion": confusion.tolist(),
        "lateralised_focal": lateral_n, "top_region_on_side": lateral / max(lateral_n, 1),
        "top_supporting_region_on_side": lateral_pos / max(lateral_n, 1),
        "side_output_seizures": side_n, "side_named_on_side": side_named / side_n if side_n else float("nan"),
        "side_top_region_on_side": side_top / side_n if side_n else float("nan"),
        "lateralised_focal_wide": wide_n, "top_region_on_side_wide": wide / max(wide_n, 1),
        "unusual_auroc": _binary_auroc(y, s) if 0 < y.sum() < len(y) else float("nan"),
        "unusual_auroc_by_label": per_label,
        "flagged_unusual": float(np.mean(np.asarray(flags)[y == 1])) if y.any() else float("nan"),
        "flagged_usual": float(np.mean(np.asarray(flags)[y == 0])) if (y == 0).any() else float("nan"),
        "seconds_per_seizure": float(np.mean(seconds)),
    }


def decision_weights(checkpoint: Any) -> dict[str, float] | None:
    """For a linear keypoint model (the head reads the scaled descriptors directly): each input's weight in the
    log-odds of FOS against TCS, per unit of the scaled descriptor; None for any other model."""
    from semiofed.common.learning.classifier import Identity
    from semiofed.common.records.motion import MOTION_FEATURE_NAMES

    model, config = checkpoint.model, checkpoint.config
    decision_streams = tuple(s for s in config.streams if s != "side")  # the side output's stream: not the decision's
    if not isinstance(model.temporal, Identity) or decision_streams != ("keypoints",) or config.embed_dim:
        return None
    names = list(config.descriptors or MOTION_FEATURE_NAMES) + ["window valid"]
    weight = model.head.weight.detach().numpy()
    fos, tcs = config.labels.index("FOS"), config.labels.index("TCS")
    if weight.shape[1] != len(names):
        return None
    return {name: float(weight[fos, i] - weight[tcs, i]) for i, name in enumerate(names)}


def weights_table(models: dict[str, Any]) -> str:
    """Markdown: the FOS-against-TCS weights of each linear model, one column per model."""
    weights = {name: w for name, ckpt in models.items() if (w := decision_weights(ckpt)) is not None}
    if not weights:
        return "(no linear keypoint model)"
    names = list(next(iter(weights.values())))
    lines = ["| input | " + " | ".join(weights) + " |", "|---|" + "---:|" * len(weights)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{w[name]:+.2f}" for w in weights.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="output folder of `semiofed demo`")
    parser.add_argument("--cohort", type=Path, required=True, help="a bench/utility_cohorts.py cohort folder")
    parser.add_argument("--unusual-reference", type=Path,
                        help="site store of public reference seizures for the unusual-seizure reference (default: the "
                             "demo's reference-site); use one made like the cohort's clips")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="also assess with this checkpoint (e.g. a region-stream model kept by "
                             "bench/bench_region_stream.py --save); repeatable")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--weights", action="store_true",
                        help="only print (and with --write, write) the linear models' FOS-against-TCS weights")
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    from semiofed.client.training.evolution import PHASES

    from semiofed.client.training.calibrate import reference_records

    if args.weights:
        models = checkpoints(args.demo, args.unusual_reference)
        for spec in args.model:
            name, _, path = spec.partition("=")
            models[name] = with_unusual(Path(path), models["federated DP"].meta["unusual"])
        body = (f"`python bench/bench_explain.py --demo DEMO --cohort COHORT --weights` (DEMO: `semiofed demo`, seed "
                f"{json.loads((args.demo / 'report.json').read_text())['config']['seed']}). The linear default model "
                "reads each window's scaled descriptors directly (common/records/motion.py); each entry is the change "
                "of the snippet's log-odds of FOS against TCS per unit of that descriptor (w_FOS - w_TCS).\n\n"
                + weights_table(models))
        print(body)
        if args.write:
            print("written to", write_section("explain-weights", "What the linear model reads: its FOS-against-TCS "
                                              "weights (issue 17)", body))
        return
    pairs = cohort(args.cohort)
    reference_count = len(reference_records(args.unusual_reference, ("FOS", "TCS"))) if args.unusual_reference else 0
    models = checkpoints(args.demo, args.unusual_reference)
    for spec in args.model:
        name, _, path = spec.partition("=")
        models[name] = with_unusual(Path(path), models["federated DP"].meta["unusual"])
    results = {name: evaluate(ckpt, pairs) for name, ckpt in models.items()}
    by_record = more_moving_arm_on_side(pairs)
    if args.json:
        figures = results | {"record_more_moving_arm_on_side": list(by_record)}
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    first = next(iter(results.values()))
    labels = {}
    for record, _ in pairs:
        labels[record.label] = labels.get(record.label, 0) + 1
    rows = ["| model | balanced accuracy (FOS/TCS) | generalisation found | generalisation median abs error (s) | "
            "onset median abs error (s) | phase accuracy per snippet | top region on the seizing side | "
            "side output: side named / its top limb on the seizing side | "
            "unusual AUROC (all / hypermotor / non-epileptic) | flagged: unusual / usual | s per seizure |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        by = r["unusual_auroc_by_label"]
        rows.append(f"| {name} | {r['balanced_accuracy']:.2f} | {r['generalisation_found']}/{r['tcs']} | "
                    f"{r['generalisation_median_abs_error_s']:.1f} | {r['onset_median_abs_error_s']:.1f} | "
                    f"{r['phase_accuracy']:.2f} | {r['top_region_on_side']:.0%} of {r['lateralised_focal']} "
                    f"(supporting: {r['top_supporting_region_on_side']:.0%}; with head signs: "
                    f"{r['top_region_on_side_wide']:.0%} of {r['lateralised_focal_wide']}) | "
                    + (f"{r['side_named_on_side']:.0%} / {r['side_top_region_on_side']:.0%} of {r['side_output_seizures']}"
                       if r["side_output_seizures"] else "no side output") + f" | {r['unusual_auroc']:.2f} / "
                    f"{by.get('hypermotor', float('nan')):.2f} / {by.get('pnes', float('nan')):.2f} | "
                    f"{r['flagged_unusual']:.0%} / {r['flagged_usual']:.0%} | {r['seconds_per_seizure']:.2f} |")
    confusion = ["| true \\ estimated | " + " | ".join(PHASES) + " |", "|---|" + "---:|" * len(PHASES)]
    for phase, row in zip(PHASES, first["phase_confusion"]):
        confusion.append(f"| {phase} | " + " | ".join(str(v) for v in row) + " |")
    body = (
        f"`python bench/bench_explain.py --demo DEMO --cohort COHORTS/{args.cohort.name}"
        + (f" --unusual-reference COHORTS/{args.unusual_reference.parents[1].name}/sites/{args.unusual_reference.name}"
           if args.unusual_reference else "") + "` (DEMO: `semiofed demo --out DEMO`, seed 0; COHORTS: "
        f"`python bench/utility_cohorts.py --only {args.cohort.name}"
        + (f" {args.unusual_reference.parents[1].name}" if args.unusual_reference else "") + "`)"
        + (f", with {len(args.model)} more models (`--model NAME=CHECKPOINT`, each named in its row)" if args.model
           else "") + ". Held-out cohort: "
        f"{args.cohort.name}, {len(pairs)} phantom seizures of {len({r.patient_pseudonym for r, _ in pairs})} patients "
        f"never seen in training or calibration ({', '.join(f'{k} {v}' for k, v in sorted(labels.items()))}; "
        "hypermotor and non-epileptic (pnes) are semiologies no model or reference has seen), rendered and run "
        "through `site prepare` (pose). Models: the demo's federated DP model and its centralised non-DP model, "
        "both calibrated on the demo's 24 public reference seizures. Unusual-seizure reference: "
        + (f"{reference_count} public reference seizures made like the cohort's clips "
           f"({args.unusual_reference.parents[1].name})" if args.unusual_reference else
           "the demo's reference seizures") + ". "
        "Classification reads the seizure itself (its clinician's times, which the cohort's records carry, and 1 s "
        "either side; common/records/activity.py), as `semiofed predict --onset-s/--offset-s` does. Generalisation (of a seizure the model calls TCS): the first 1 s of bilaterally synchronous arm movement "
        "in the movement span (client/training/evolution.py; else the model's first run of 3 snippets with "
        "P(TCS) >= 0.5), against the truth's `generalization_s` (error over the TCS where one was found; a TCS "
        "called FOS has none). Onset: start of the movement span against the truth's `onset_s`, every FOS and TCS. Phases: client/training/evolution.py per "
        "snippet against the truth's phases (interictal, focal, tonic, clonic, postictal). Top region: the read "
        "region the model's reading rests on most (occlusion sensitivity), on the side of a focal seizure's "
        "unilateral limb signs (clonic arm, hemiclonic, dystonic hand, all on one side); supporting: the region "
        "whose stillness lowers the decision's log-odds most; with head signs: also seizures lateralised only by "
        "head version or facial clonus (the head is one region without a side, so these count as misses unless "
        "an arm or leg of that side leads). Side output: the side of the focal signs that the model's side output "
        "names (7 weights on left-minus-right movement and wrist height, common/records/side.py), and whether the "
        "limb whose pair carries most of it is on the seizing side, over the same lateralised focal seizures. "
        "Unusual: the mean over the seizure's windows (within its clinician's times) of their Mahalanobis distance "
        "from the windows of the reference label it is closest to, 29 motion descriptors (common/learning/unusual.py), "
        "flag above the reference's own 95th percentile.\n\n"
        + "\n".join(rows) + "\n\nThe record itself, no model: the arm that moves more in most windows of the seizure "
        "(the region stream's left and right arm energy, truth onset to offset) is on the seizing side in "
        f"{by_record[0]} of {by_record[1]} lateralised focal seizures ({by_record[0] / max(by_record[1], 1):.0%}): "
        "naming the side by which arm moves more would be right that often.\n\n"
        "Phase confusion of the federated DP model (snippets):\n\n" + "\n".join(confusion))
    print(body)
    if args.write:
        # the held-out cohort of the issue keeps the section it always had; another cohort gets its own
        name, title = ("explain", "") if args.cohort.name == "explain-p40" else (args.cohort.name, f", cohort {args.cohort.name}")
        print("written to", write_section(name, "What a clinician reads: evolution, regions, unusual seizures "
                                          f"(issue 17){title}", body))


if __name__ == "__main__":
    main()
