"""The public initial model: federated local DP from random weights against from a model trained on public seizures.

Usage: python bench/bench_public_init.py --demo NAME=DEMO [--demo ...] [--seeds 60 61 62 63 64]
       [--explain-cohort COHORTS/explain-lateral] [--write]

DEMO is the output of `semiofed demo` (its 3 sites of 28 phantom patients, prepared through `site prepare`, and its
24 public reference seizures in DEMO/reference-site). For each split seed, each site's patients form 2 patient-grouped
folds and each fold is the test set once (every patient tested once per seed). Rows, every model calibrated on the
public reference as the demo does:
  random init      FedAvg of the sites' real budgeted local-DP rounds (bench_utility.federated_local_dp: 3 rounds x
                   7 epochs, epsilon 3.9 per site) from the run's random initial weights (the demo until 2026-12-07)
  public init      the same rounds from common/learning/public_model.py's model of the public reference
  public only      that public model alone, no site data: what the federation has to beat
  centralised      all sites' training patients in one place, no DP, random init (the non-private reference)
With --public-seizures K the public model is trained on K of the 24 reference seizures (a smaller public reference;
the random-init and centralised rows do not use it). Also: whether `semiofed predict`'s top region names the seizing side of the held-out lateralised focal seizures
(demo folds), and, with --explain-cohort, the fold-0 model of each seed on that held-out cohort (bench_explain.py's
balanced accuracy and top region).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utility import ROUNDS, LOCAL_EPOCHS, federated_local_dp, predict  # noqa: E402
from report import write_section  # noqa: E402

from semiofed.client.training.calibrate import calibrate_model, reference_records  # noqa: E402
from semiofed.client.training.federated_round import SiteSettings, SiteTask  # noqa: E402
from semiofed.client.training.local import group_patients  # noqa: E402
from semiofed.common.federation.run_config import FederationConfig  # noqa: E402
from semiofed.common.learning.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from semiofed.common.learning.classifier import build_classifier, classifier_config  # noqa: E402
from semiofed.common.learning.metrics import classification_report  # noqa: E402
from semiofed.common.learning.public_model import public_patients, train_public_model  # noqa: E402
from semiofed.common.learning.spec import DEFAULT_MODEL, DEFAULT_SCHEDULE  # noqa: E402
from semiofed.common.learning.trainer import TrainConfig, Trainer  # noqa: E402
from semiofed.common.learning.weights import get_weights  # noqa: E402

EPSILON = 3.9  # the demo's federated epsilon per site
ROWS = ("random init", "public init", "public only", "centralised")


def fold_model(row: str, demo: Path, fed: FederationConfig, seed: int, fold: int, public: Any) -> Any:
    """The row's final model for one test fold (not yet calibrated)."""
    site_dirs = sorted((demo / "sites").iterdir())
    if row == "public only":
        return public
    if row == "centralised":
        model = build_classifier(classifier_config(fed), seed=seed)
        tasks = [SiteTask(SiteSettings(d, split_seed=seed), fed) for d in site_dirs]
        trainer = Trainer(model, TrainConfig(epochs=ROUNDS * LOCAL_EPOCHS, batch_patients=fed.batch_patients, lr=fed.lr,
                                             optimizer=fed.optimizer, dp=False, seed=seed), n_segments=fed.n_segments)
        trainer.fit([p for t in tasks for p in t.train])
        trainer.close()
        return model
    start = get_weights(public) if row == "public init" else get_weights(build_classifier(classifier_config(fed), seed=seed))
    model, _ = federated_local_dp(site_dirs, fed, EPSILON, seed, fold, start, scratch=f"pi-{row[:6]}-{demo.name}-")
    return model


def public_subset(seizures: list, k: int | None, seed: int) -> list:
    """k of the public seizures, half of each label (all when k is None): a smaller public reference."""
    if k is None:
        return seizures
    rng = np.random.default_rng([seed, k])
    by_label: dict[int, list] = {}
    for s in seizures:
        by_label.setdefault(s.label, []).append(s)
    return [group[i] for _, group in sorted(by_label.items()) for i in rng.permutation(len(group))[: k // len(by_label)]]


def run_row(row: str, demo: Path, seeds: list[int], explain: list | None, public_k: int | None = None) -> dict[str, Any]:
    from bench_explain import evaluate
    from bench_region_stream import lateral_hits

    reference = reference_records(demo / "reference-site", DEFAULT_MODEL.labels)
    ref_patients = group_patients(reference, DEFAULT_MODEL.labels, DEFAULT_MODEL.streams)
    meta = load_checkpoint(Path(json.loads((demo / "report.json").read_text())["final_checkpoint"])).meta
    per_seed = []
    for seed in seeds:
        ys, ps, lateral, xl, started = [], [], [], None, time.monotonic()
        base = FederationConfig(rounds=ROUNDS, local_epochs=LOCAL_EPOCHS, folds=2, validation=False, seed=seed,
                                site_epsilon=EPSILON)
        public_seizures = public_subset([s for p in ref_patients for s in p.seizures], public_k, seed)
        for fold in (0, 1):
            fed = replace(base, test_fold=fold)
            # the public model depends on the seed only; it is retrained per fold because calibration changes it in place
            public = None if row in ("random init", "centralised") else train_public_model(
                public_patients(public_seizures), classifier_config(fed), lr=fed.lr, optimizer=fed.optimizer,
                batch_patients=fed.batch_patients, seed=seed)
            model = fold_model(row, demo, fed, seed, fold, public)
            calibrate_model(model, reference, fed.n_segments)
            tasks = [SiteTask(SiteSettings(d, split_seed=seed), fed) for d in sorted((demo / "sites").iterdir())]
            for task in tasks:
                y, p = predict(model, 1.0, task.test)
                ys += y
                ps.append(p)
            checkpoint = Checkpoint(path=demo, model=model, config=model.config, meta={**meta, "temperature": 1.0})
            lateral += lateral_hits(checkpoint, tasks, demo)
            if fold == 0 and explain:
                xl = evaluate(checkpoint, explain)
        report = classification_report(np.array(ys), np.concatenate(ps))
        per_seed.append({"seed": seed, "balanced_accuracy": report["balanced_accuracy"], "auroc": report["auroc"],
                         "ece": report["ece"], "lateral": [int(np.sum(lateral)), len(lateral)],
                         "explain_balanced_accuracy": None if xl is None else xl["balanced_accuracy"],
                         "explain_top_region": None if xl is None else [round(xl["top_region_on_side"] * xl["lateralised_focal"]),
                                                                        xl["lateralised_focal"]],
                         "seconds": round(time.monotonic() - started, 1)})
        print(row, demo.name, json.dumps(per_seed[-1]), file=sys.stderr, flush=True)
    return {"row": row, "seeds": per_seed}


def _mean(values: list[float]) -> str:
    return f"{', '.join(f'{v:.2f}' for v in values)} (**{np.mean(values):.2f}**)"


def table(results: dict[str, list[dict]]) -> list[str]:
    rows = ["| cohort | model | balanced accuracy per seed (mean) | AUROC per seed (mean) | ECE (mean) | seeds at chance (AUROC < 0.6) | top region on the seizing side (demo folds) | explain-lateral: balanced accuracy (mean) | explain-lateral: top region on the seizing side |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for cohort, rows_ in results.items():
        for r in rows_:
            s = r["seeds"]
            lat = np.sum([x["lateral"] for x in s], axis=0)
            xl_ba = [x["explain_balanced_accuracy"] for x in s if x["explain_balanced_accuracy"] is not None]
            xl_top = np.sum([x["explain_top_region"] for x in s if x["explain_top_region"] is not None], axis=0) \
                if xl_ba else None
            rows.append(f"| {cohort} | {r['row']} | {_mean([x['balanced_accuracy'] for x in s])} | "
                        f"{_mean([x['auroc'] for x in s])} | {np.mean([x['ece'] for x in s]):.3f} | "
                        f"{sum(x['auroc'] < 0.6 for x in s)} of {len(s)} | {lat[0] / lat[1]:.0%} of {lat[1]} | "
                        f"{_mean(xl_ba) if xl_ba else '-'} | "
                        f"{'-' if xl_top is None else f'{xl_top[0] / xl_top[1]:.0%} of {xl_top[1]}'} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="append", required=True, metavar="NAME=DEMO")
    parser.add_argument("--seeds", type=int, nargs="+", default=[60, 61, 62, 63, 64])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--explain-cohort", type=Path)
    parser.add_argument("--public-seizures", type=int, nargs="+", default=[],
                        help="also train the public model on only K of the reference seizures (half of each label, "
                             "drawn per seed); the calibration still uses all of them")
    parser.add_argument("--json", type=Path, help="write the results here as they come")
    parser.add_argument("--from-json", type=Path, help="only rebuild the table from a --json file of the same arguments")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    from bench_explain import cohort

    explain = args.explain_cohort is not None
    results: dict[str, list[dict]] = json.loads(args.from_json.read_text()) if args.from_json else {}
    pairs = cohort(args.explain_cohort) if explain and not args.from_json else None
    for item in [] if args.from_json else args.demo:
        name, _, path = item.partition("=")
        results[name] = [run_row(row, Path(path), args.seeds, pairs) for row in args.rows]
        for k in args.public_seizures:
            results[f"{name}, {k} public seizures"] = [run_row(row, Path(path), args.seeds, pairs, k)
                                                       for row in args.rows if row in ("public init", "public only")]
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    body = (f"`python bench/bench_public_init.py {' '.join(f'--demo {shlex.quote(d)}' for d in args.demo)} --seeds "
            f"{' '.join(map(str, args.seeds))}{' --explain-cohort ' + str(args.explain_cohort.name) if explain else ''}"
            f"{' --public-seizures ' + ' '.join(map(str, args.public_seizures)) if args.public_seizures else ''}`: "
            "the sites and public reference (24 seizures) of `semiofed demo` runs; split seeds never used before this "
            "bench; 2 patient folds per site, each tested once per seed. Federated rows: FedAvg of the sites' real "
            f"budgeted local-DP rounds ({ROUNDS} rounds x {LOCAL_EPOCHS} epochs at q = 1, epsilon {EPSILON} per site, "
            "noise from the OS). Public init: the rounds start from the model trained on the public reference "
            f"(common/learning/public_model.py, no DP, {DEFAULT_SCHEDULE.lr:g} Adam). Every model calibrated on the "
            "public reference. explain-lateral: each seed's fold-0 model on bench/utility_cohorts.py's held-out "
            "cohort (80 seizures, 37 lateralised by limb signs).\n\n" + "\n".join(table(results)))
    print(body)
    if args.write:
        print("written to", write_section("public-init", "The public initial model", body))


if __name__ == "__main__":
    main()
