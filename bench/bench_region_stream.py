"""The body-region stream against the ten-descriptor keypoint stream, federated under DP (issue 17).

Usage: python bench/bench_region_stream.py --demo DEMO [--seeds 0 1] [--write]

DEMO is the output of `semiofed demo` (3 phantom hospitals of 28 patients each, prepared through `site prepare`,
and its public reference). For each model, each seed and each of the two patient folds, every site is copied with
its keys and records but a fresh ledger (the copies are bench scratch; the demo's own sites keep theirs), and the
demo's federated run is repeated in Flower's simulation engine (SecAgg+, patient-level DP at each site to the
demo's epsilon 3.9, 3 rounds x 7 local epochs); the final model is calibrated on the public reference and tested on
the held-out fold of every site (each patient is tested once per seed). Models: the default temporal model of
`semiofed demo`'s run config (the GRU until 2026-12-06, the linear head since) over ten mirror-invariant
descriptors, the same model over the body-region stream (common/records/region_motion.py: each region's energy
and rhythm, sides apart, through per-region encoders, `RegionFusion`), and both streams together. Also reported:
whether the region attributions of `semiofed predict` name the seizing side on the held-out lateralised focal
seizures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

MODELS = {"keypoints (ten descriptors)": ("keypoints",), "regions": ("regions",),
          "keypoints + regions": ("keypoints", "regions")}
SCRATCH_SKIP = ("ledger.jsonl", "privacy")


def copy_sites(demo: Path, into: Path) -> list[Path]:
    """The demo's site stores with keys and records, with an empty ledger and accountant state (as `site init`
    leaves them)."""
    from semiofed.client.site import open_site
    from semiofed.common.files import make_private_dir, write_bytes_atomic

    out = []
    for site in sorted((demo / "sites").iterdir()):
        target = into / site.name
        shutil.copytree(site, target, ignore=lambda d, names: [n for n in names if Path(d) == site and n in SCRATCH_SKIP])
        layout = open_site(target).layout
        make_private_dir(layout.privacy_dir)
        write_bytes_atomic(layout.ledger_file, b"")
        out.append(target)
    return out


def run_one(demo: Path, streams: tuple[str, ...], seed: int, test_fold: int, reference: list[Any],
            save: Path | None = None) -> dict[str, Any]:
    """One federated DP run on fresh copies of the demo's sites; the final model's held-out predictions (and, with
    `save`, the calibrated final model, with the demo's unusual-seizure reference, kept there)."""
    from semiofed.client.training.calibrate import calibrate_model
    from semiofed.common.learning.checkpoint import load_checkpoint
    from semiofed.server.demo import MODE_SIMULATION, DemoConfig, evaluate_everywhere, federate, site_tasks

    with tempfile.TemporaryDirectory(prefix="semiofed-regions-") as tmp:
        root = Path(tmp)
        site_dirs = copy_sites(demo, root / "sites")
        config = DemoConfig(out=root, seed=seed, mode=MODE_SIMULATION)
        fed = replace(config.federation(), streams=streams, test_fold=test_fold)
        t0 = time.monotonic()
        run = federate(config, site_dirs, fed, lambda _line: None)
        if run.get("status") != "finished":
            raise SystemExit(f"run failed: {run.get('error')}")
        final = load_checkpoint(Path(run["final_checkpoint"]))
        calibrate_model(final.model, reference, fed.n_segments)
        tasks = site_tasks(site_dirs, fed)
        result = evaluate_everywhere(final.model, 1.0, tasks, fed.n_segments)
        lateral = lateral_hits(final, tasks, demo)
        if save is not None:
            from semiofed.common.learning.checkpoint import CHECKPOINT_OWN_KEYS, save_checkpoint
            from semiofed.common.learning.unusual import fit_unusual_on_records

            meta = {k: v for k, v in final.meta.items() if k not in CHECKPOINT_OWN_KEYS}
            save_checkpoint(save, final.model, meta | {"temperature": 1.0, "unusual": fit_unusual_on_records(reference).to_json(),
                                                       "trained": f"federated DP, streams {','.join(streams)}, seed {seed}, "
                                                                  f"test fold {test_fold}"})
        from semiofed.common.learning.classifier import parameter_count

        return {"y": result["y"], "p": result["p"], "seconds": time.monotonic() - t0, "lateral": lateral,
                "parameters": parameter_count(final.model)}


def lateral_hits(checkpoint: Any, tasks: list[Any], demo: Path) -> list[bool]:
    """For each held-out lateralised focal seizure: is the top attributed region on the seizing side?"""
    from bench_explain import seizing_side

    from semiofed.client.training.explain import explain_record
    from semiofed.client.training.local import load_site_records

    hits = []
    for task in tasks:
        test_ids = {s.record_id for p in task.test for s in p.seizures}
        truths = [json.loads(p.read_text()) for p in sorted((demo / "videos" / task.site.site_id / "truth").glob("*.json"))]
        for record in load_site_records(task.site, checkpoint.config.labels):
            if record.record_id not in test_ids or record.label != "FOS":
                continue
            match = [t for t in truths if t["label"] == record.label and abs(t["onset_s"] - record.onset_s) < 0.006
                     and abs(t["offset_s"] - record.offset_s) < 0.006
                     and abs(t["num_frames"] / t["fps"] - record.duration_s) < 0.15]
            side = seizing_side(match[0]) if len(match) == 1 else None
            if side is not None:
                top = explain_record(checkpoint, record).top_region
                hits.append(bool(top and top.startswith(side)))
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--save", type=Path, help="keep each model's fold-0 final checkpoint per seed here")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    from semiofed.client.training.calibrate import reference_records
    from semiofed.common.learning.metrics import classification_report
    from semiofed.common.learning.spec import DEFAULT_MODEL

    results: dict[str, dict[str, Any]] = {}
    reference = reference_records(args.demo / "reference-site", DEFAULT_MODEL.labels)
    for name in args.models:
        streams = MODELS[name]
        runs = []
        for seed in args.seeds:
            for fold in (0, 1):
                keep = None if args.save is None or fold else args.save / f"{'-'.join(streams)}-seed{seed}"
                runs.append(run_one(args.demo, streams, seed, fold, reference, keep))
                r = classification_report(np.array(runs[-1]["y"]), np.array(runs[-1]["p"]))
                print(f"{name} seed {seed} fold {fold}: balanced accuracy {r['balanced_accuracy']:.3f} "
                      f"({runs[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
        per_seed = []
        for k, seed in enumerate(args.seeds):
            y = np.concatenate([runs[2 * k]["y"], runs[2 * k + 1]["y"]])
            p = np.concatenate([runs[2 * k]["p"], runs[2 * k + 1]["p"]])
            per_seed.append(classification_report(y, p))
        lateral = [h for r in runs for h in r["lateral"]]
        results[name] = {"balanced_accuracy": [r["balanced_accuracy"] for r in per_seed],
                         "auroc": [r["auroc"] for r in per_seed], "seizures": int(len(y)),
                         "parameters": runs[0]["parameters"], "lateral_on_side": float(np.mean(lateral)) if lateral else None,
                         "lateral_n": len(lateral), "seconds_per_run": float(np.mean([r["seconds"] for r in runs]))}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    rows = ["| model | parameters | balanced accuracy per seed (mean) | AUROC per seed (mean) | top region on the seizing side (held-out lateralised FOS) | s per run |",
            "|---|---:|---|---|---:|---:|"]
    for name, r in results.items():
        ba, au = r["balanced_accuracy"], r["auroc"]
        rows.append(f"| {name} | {r['parameters']} | {', '.join(f'{v:.2f}' for v in ba)} ({np.mean(ba):.2f}) | "
                    f"{', '.join(f'{v:.2f}' for v in au)} ({np.mean(au):.2f}) | "
                    f"{'-' if r['lateral_on_side'] is None else format(r['lateral_on_side'], '.0%')} of {r['lateral_n']} | "
                    f"{r['seconds_per_run']:.0f} |")
    body = (f"`python bench/bench_region_stream.py --demo DEMO --seeds {' '.join(map(str, args.seeds))}"
            + (f" --models {' '.join(repr(m) for m in args.models)}" if args.models != list(MODELS) else "") + "` on the "
            f"output of `semiofed demo` (seed 0: 84 phantom patients at 3 hospitals; every patient held out once per "
            f"seed over the two folds: {results[next(iter(results))]['seizures']} held-out seizures per seed). "
            "Federated in "
            "Flower's simulation engine with SecAgg+ and patient-level DP at each site (epsilon 3.9 per run, "
            "delta 1e-5), 3 rounds x 7 local epochs, calibrated on the demo's public reference. Seeds fix the "
            "initial weights; DP noise comes from the OS.\n\n" + "\n".join(rows))
    print(body)
    if args.write:
        print("written to", write_section("region-stream", "Body-region streams under federated DP (issue 17)", body))


if __name__ == "__main__":
    main()
