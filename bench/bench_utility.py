"""Utility of the DP model: centralised non-DP vs local-only DP vs federated DP (FedAvg) at epsilon 1, 3, 8.

Usage: python bench/bench_utility.py --held-out DEMO/sites [--reference DEMO/reference-site]
       [--dev /tmp/semiofed-bench/motion-cohort/site] [--seeds 0 1] [--epsilons 1 3 8] [--write]
   or: python bench/bench_utility.py --cohort NAME=COHORTS/NAME/sites [--cohort ...] --reference COHORTS/reference-site
       [--cohort-seeds NAME=0,1] [--distributed-epsilons NAME=3,8] [--seeds 0 1 2] [--epsilons 1 3 8] [--write]

The model is the default one (common/learning/spec.py: the linear head on each window's
descriptors since 2026-12-06, the 4-unit GRU before; keypoint stream) with the default
schedule, untuned; the epsilon-8 rows of the other model (`--temporal gru` now) compare
the two. Every DP setting runs in fresh scratch copies of the sites
(bench/phantom_cohort.py `scratch_site`), so no budget carries over between settings.

Held-out cohort (the sites of a `semiofed demo` run): each site's patients form 2
patient-grouped folds, no validation fold (temperature 1); each fold is the test set
once, so every patient is tested once per split seed. Predictions of all sites and
folds are pooled into balanced accuracy and AUROC (95% bootstrap intervals) and ECE.
  centralised  all sites' training patients in one place, no DP (the non-private reference)
  local-only   each site alone, `site train --epsilon` (epsilon per model)
  federated    FedAvg of the sites' real budgeted DP rounds (SiteTask.fit, in process),
               each site's run at `site_epsilon` = epsilon
With --reference (a demo's public reference seizures), the held-out rows are measured again
with every model's decision threshold and scale set on them first, as `semiofed demo` does.
Dev cohort (one site, used to design the descriptors and the recipe): patient-grouped
5-fold `cross_validate`, no validation fold; non-DP and local-only DP at the noise that
brings one fold's model to epsilon.
Issue 13's cohorts (`--cohort`, built by bench/utility_cohorts.py: 3 and 10 sites, 30 and 150 patients): the same
held-out protocol, every model with the reference threshold, no rows of the other model; K of the distributed row is the
cohort's number of sites; section 'utility-scale' of docs/benchmarks.md.
Results are cached per setting and seed under /tmp/semiofed-bench/utility-motion/. The sites' ledger checks are
memoised and fsync skipped in this process (bench/fast_ledger.py): the same values, computed faster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fast_ledger  # noqa: E402
from phantom_cohort import BENCH_DIR, scratch_site  # noqa: E402
from report import write_section  # noqa: E402

from semiofed.client.site import open_site  # noqa: E402
from semiofed.client.training.cross_validation import cross_validate, fold_splits  # noqa: E402
from semiofed.client.training.federated_round import SiteSettings, SiteTask  # noqa: E402
from semiofed.client.training.local import LocalTrainingOptions, group_patients, load_site_records, train_site  # noqa: E402
from semiofed.common.federation.run_config import FederationConfig  # noqa: E402
from semiofed.common.learning.checkpoint import load_checkpoint  # noqa: E402
from semiofed.common.learning.classifier import build_classifier, classifier_config, parameter_count  # noqa: E402
from semiofed.common.learning.metrics import (  # noqa: E402
    bootstrap_intervals, classification_report, expected_calibration_error, softmax)
from semiofed.common.constants import TEMPORAL_GRU, TEMPORAL_LINEAR  # noqa: E402
from semiofed.common.learning.spec import DEFAULT_MODEL, DEFAULT_SCHEDULE  # noqa: E402
from semiofed.common.learning.trainer import Patient, Seizure, TrainConfig, Trainer, predict_logits  # noqa: E402
from semiofed.common.privacy.accountant import SiteAccountant  # noqa: E402
from semiofed.server.demo import REFERENCE_SEED_OFFSET, calibrate  # noqa: E402
from semiofed.server.federation.server_app import initial_weights  # noqa: E402

log = logging.getLogger("bench_utility")

CACHE = BENCH_DIR / "utility-motion"
SCRATCH = BENCH_DIR / "scratch" / "utility-motion"
MAX_EPSILON = 1000.0  # scratch sites only: the setting's epsilon is the cap, not the policy
ROUNDS, LOCAL_EPOCHS = 3, 7  # the demo's federated schedule (21 noisy steps per site at q = 1)
# distributed DP: one step a round (docs/privacy.md's rule); K = the cohort's sites (every sum holds all of them),
# the sites' policy tolerating one colluder (the default policy's distributed_dp_colluders)
DISTRIBUTED_ROUNDS = 200
HELD_OUT_FOLDS, DEV_FOLDS = 2, 5
REFERENCE_SEED = 0 + REFERENCE_SEED_OFFSET  # the demo's public reference cohort (DemoConfig(seed=0).reference())
CENTRALISED, LOCAL, FEDERATED, DISTRIBUTED = "centralised", "local-only", "federated", "federated-distributed"

Predictions = tuple[list[int], np.ndarray]


def predict(model: torch.nn.Module, temperature: float, patients: Sequence[Patient]) -> Predictions:
    """Labels and calibrated probabilities of every seizure of `patients`."""
    seizures = [s for p in patients for s in p.seizures]
    probs = softmax(predict_logits(model, seizures, n_segments=DEFAULT_MODEL.n_segments), temperature)
    return [s.label for s in seizures], probs


def fedavg(results: Sequence[tuple[list[np.ndarray], int, dict]]) -> list[np.ndarray]:
    """Flower's FedAvg (server/federation/strategy.py): the sites' weights averaged by their training patients."""
    total = sum(n for _, n, _ in results)
    return [np.asarray(sum(w[i].astype(np.float64) * n for w, n, _ in results) / total, dtype=np.float32)
            for i in range(len(results[0][0]))]


def held_out_fold(site_dirs: list[Path], row: str, epsilon: float | None, temporal: str, seed: int, test_fold: int,
                  reference: list[Seizure]) -> tuple[Predictions, dict[str, Any]]:
    """One test fold of the held-out cohort: train the row's model(s), predict every site's test patients.

    With `reference` seizures (public), each model's decision threshold and scale are set on them first, as the demo does.
    """
    def decide(model: torch.nn.Module) -> torch.nn.Module:
        if reference:
            calibrate(model, reference, DEFAULT_MODEL.n_segments)
        return model

    fed = FederationConfig(rounds=ROUNDS, local_epochs=LOCAL_EPOCHS, folds=HELD_OUT_FOLDS, test_fold=test_fold,
                           validation=False, seed=seed, temporal=temporal, site_epsilon=epsilon or 0.0)
    # the splits (read only; training uses scratch copies): the site's own folds, placed anew for each split seed
    tasks = [SiteTask(SiteSettings(d, split_seed=seed), fed) for d in site_dirs]
    parts: list[Predictions] = []
    info: dict[str, Any] = {}
    if row == CENTRALISED:
        model = build_classifier(classifier_config(fed), seed=seed)
        config = TrainConfig(epochs=DEFAULT_SCHEDULE.epochs, batch_patients=fed.batch_patients, lr=fed.lr, dp=False,
                             seed=seed)
        trainer = Trainer(model, config, n_segments=fed.n_segments)
        trainer.fit([p for t in tasks for p in t.train])
        trainer.close()
        parts = [predict(decide(model), 1.0, t.test) for t in tasks]
    elif row == LOCAL:
        sigmas = []
        for i, (d, task) in enumerate(zip(site_dirs, tasks)):
            site = scratch_site(d, SCRATCH / f"{i}-{d.name}", max_epsilon=MAX_EPSILON)
            options = LocalTrainingOptions(epsilon=epsilon, temporal=temporal, folds=HELD_OUT_FOLDS,
                                           test_fold=test_fold, validation=False, seed=seed, run_name="bench")
            result = train_site(site.layout.root, options)
            checkpoint = load_checkpoint(result.checkpoint)
            parts.append(predict(decide(checkpoint.model), checkpoint.temperature, task.test))
            sigmas.append(result.noise_multiplier)
            info.setdefault("epsilon_spent", []).append(result.epsilon_spent)
        info["sigma"] = sigmas
    elif row == DISTRIBUTED:
        weights, info = distributed_run(site_dirs, fed, epsilon, seed, test_fold)
        model = decide(tasks[0].build_model(weights))
        parts = [predict(model, 1.0, t.test) for t in tasks]
    else:
        model, info = federated_local_dp(site_dirs, fed, epsilon, seed, test_fold, initial_weights(fed))
        parts = [predict(decide(model), 1.0, t.test) for t in tasks]
    y = [label for labels, _ in parts for label in labels]
    return (y, np.concatenate([p for _, p in parts])), info


def federated_local_dp(site_dirs: list[Path], fed: FederationConfig, epsilon: float, seed: int, test_fold: int,
                       weights: list[np.ndarray], scratch: str = "") -> tuple[torch.nn.Module, dict[str, Any]]:
    """FedAvg of the sites' real budgeted local-DP rounds (`SiteTask.fit`, in process on scratch copies of the sites)
    from `weights`; the final model and each site's sigma and epsilon spent."""
    sites = [scratch_site(d, SCRATCH / f"{scratch}{i}-{d.name}", max_epsilon=MAX_EPSILON) for i, d in enumerate(site_dirs)]
    scratch_tasks = [SiteTask(SiteSettings(s.layout.root, split_seed=seed), fed) for s in sites]
    run_id = f"bench{scratch}-eps{epsilon:g}-s{seed}-f{test_fold}"
    for round_ in range(1, ROUNDS + 1):
        results = [t.fit(weights, run_id=run_id, round=round_) for t in scratch_tasks]
        weights = fedavg(results)
    return scratch_tasks[0].build_model(weights), {"sigma": [m["noise_multiplier"] for _, _, m in results],
                                                   "epsilon_spent": [m["epsilon_spent"] for _, _, m in results]}


def distributed_run(site_dirs: list[Path], fed: FederationConfig, epsilon: float, seed: int,
                    test_fold: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Distributed DP: the sites' real budgeted one-step rounds (`SiteTask.fit`, each of the K = len(site_dirs)
    sites adding sigma/sqrt(K - 1)),
    summed as SecAgg+ would and stepped by Flower's own FedAdam (the strategy the ServerApp runs)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdam

    k = len(site_dirs)  # K: every round's sum holds every site of the cohort
    run = replace(fed, dp_mode="distributed", strategy="fedadam", min_sites=k, rounds=DISTRIBUTED_ROUNDS)
    sites = [scratch_site(d, SCRATCH / f"{i}-{d.name}", max_epsilon=MAX_EPSILON, distributed_dp_sites=k)
             for i, d in enumerate(site_dirs)]
    tasks = [SiteTask(SiteSettings(s.layout.root, split_seed=seed), run) for s in sites]
    weights = initial_weights(run)
    strategy = FedAdam(initial_parameters=ndarrays_to_parameters(weights), eta=run.server_lr, fraction_fit=1.0,
                       min_fit_clients=k, min_available_clients=k)
    run_id = f"bench-dist-eps{epsilon:g}-s{seed}-f{test_fold}"
    for round_ in range(1, run.rounds + 1):
        results = [t.fit(weights, run_id=run_id, round=round_) for t in tasks]
        fit_res = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(w), n, {})) for w, n, _ in results]
        aggregated, _ = strategy.aggregate_fit(round_, fit_res, [])
        weights = parameters_to_ndarrays(aggregated)
    return weights, {"sigma": [m["noise_multiplier"] for _, _, m in results],
                     "site_sigma": [m["site_noise_multiplier"] for _, _, m in results],
                     "epsilon_spent": [m["epsilon_spent"] for _, _, m in results]}


def per_model_sigma(site_dir: Path, options: LocalTrainingOptions, epsilon: float) -> float:
    """The noise that keeps every fold's model at `epsilon` (largest fold sampling rate and step count)."""
    site = open_site(site_dir)
    patients = group_patients(load_site_records(site, options.labels), options.labels, options.streams)
    config = TrainConfig(epochs=options.epochs, batch_patients=options.batch_patients)
    sizes = [len(train) for train, _, _ in fold_splits(patients, options.folds, options.seed, validation=False)]
    fresh = SiteAccountant(site.layout.root / "probe", site.policy)  # empty history: one model's epsilon
    return fresh.noise_for(target_epsilon=epsilon, sample_rate=max(config.sample_rate(n) for n in sizes),
                           steps=max(config.steps(n) for n in sizes))


def dev_cv(dev_site: Path, row: str, epsilon: float | None, temporal: str, seed: int) -> tuple[Predictions, dict[str, Any]]:
    """Patient-grouped 5-fold cross-validation of the dev site (non-DP for the centralised row)."""
    site = scratch_site(dev_site, SCRATCH / "dev", max_epsilon=MAX_EPSILON)
    options = LocalTrainingOptions(dp=row != CENTRALISED, temporal=temporal, folds=DEV_FOLDS, validation=False,
                                   seed=seed)
    info: dict[str, Any] = {}
    if options.dp:
        info["sigma"] = [per_model_sigma(site.layout.root, options, epsilon)]
        options = replace(options, noise_multiplier=info["sigma"][0])
    result = cross_validate(site.layout.root, options)
    info["cv_total_epsilon"] = result.epsilon_spent
    return (result.pooled_labels, result.pooled_probs), info


def ece_interval(y_true: Sequence[int], probs: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> list[float]:
    """The 95% percentile bootstrap interval of ECE, on the resamples `bootstrap_intervals` draws (same seed, same skips)."""
    y = np.asarray(y_true, dtype=np.int64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        values.append(expected_calibration_error(y[idx], probs[idx]))
    tail = (1.0 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if values else [np.nan, np.nan]


def cohort_fingerprint(site_dirs: Sequence[Path]) -> str:
    """A short hash of the cohort's record names: a regenerated cohort does not reuse stale results."""
    names = sorted(f"{d.name}/{p.name}" for d in site_dirs for p in open_site(d).layout.records_dir.iterdir())
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:10]


def run_setting(cohort: str, site_dirs: list[Path], row: str, epsilon: float | None, temporal: str, seed: int,
                reference: list[Seizure]) -> dict:
    """One (row, epsilon, model, seed) on a cohort: every patient tested once, predictions pooled; cached as JSON."""
    model = hashlib.sha256(json.dumps([DEFAULT_MODEL.to_dict(), DEFAULT_SCHEDULE.__dict__, DISTRIBUTED_ROUNDS],
                                      sort_keys=True).encode()).hexdigest()[:8]
    key = (f"{cohort}_{cohort_fingerprint(site_dirs)}_m{model}_{row}_{'nodp' if epsilon is None else f'eps{epsilon:g}'}_"
           f"{temporal}_s{seed}{f'_ref{len(reference)}' if reference else ''}")
    path = CACHE / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.monotonic()
    if cohort == "dev":
        (y, probs), info = dev_cv(site_dirs[0], row, epsilon, temporal, seed)
    else:
        folds = [held_out_fold(site_dirs, row, epsilon, temporal, seed, k, reference) for k in range(HELD_OUT_FOLDS)]
        y = [label for (labels, _), _ in folds for label in labels]
        probs = np.concatenate([p for (_, p), _ in folds])
        info = {k: [v for _, i in folds for v in i.get(k, [])] for k in ("sigma", "site_sigma", "epsilon_spent")}
        info = {k: v for k, v in info.items() if v or k != "site_sigma"}
    report = classification_report(y, probs)
    out = {"cohort": cohort, "row": row, "epsilon": epsilon, "temporal": temporal, "seed": seed,
           **{k: report[k] for k in ("balanced_accuracy", "auroc", "ece", "n_seizures")},
           "ci95": bootstrap_intervals(y, probs) | {"ece": ece_interval(y, probs)}, "seconds": round(time.monotonic() - started, 1), **info}
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    log.info("%s %s eps=%s %s seed %d: BA %.3f AUROC %.3f (%.0f s)", cohort, row, epsilon, temporal, seed,
             out["balanced_accuracy"], out["auroc"], out["seconds"])
    return out


# the model compared with the default at epsilon 8: the GRU while the linear head is the default, and the reverse
ALTERNATIVE = TEMPORAL_GRU if DEFAULT_MODEL.temporal == TEMPORAL_LINEAR else TEMPORAL_LINEAR


def model_label(temporal: str) -> str:
    return f"GRU-{DEFAULT_MODEL.hidden}" if temporal == TEMPORAL_GRU else temporal


def settings(cohort: str, epsilons: Sequence[float], *, compare_other: bool = True,
             distributed_epsilons: Sequence[float] | None = None) -> list[tuple[str, float | None, str]]:
    """(row, epsilon, temporal) in table order; the other model (ALTERNATIVE) for the DP rows at epsilon 8 (if asked).

    `distributed_epsilons` (default: `epsilons`) limits the federated-distributed row, the slow one."""
    default = DEFAULT_MODEL.temporal
    rows = [LOCAL] if cohort == "dev" else [DISTRIBUTED, FEDERATED, LOCAL]
    out: list[tuple[str, float | None, str]] = [(CENTRALISED, None, default)]
    out += [(row, eps, default) for row in rows for eps in epsilons
            if row != DISTRIBUTED or distributed_epsilons is None or eps in distributed_epsilons]
    if compare_other:
        out += [(row, 8.0, ALTERNATIVE) for row in rows if 8.0 in epsilons and row != DISTRIBUTED]
    return out


def table(results: list[list[dict]]) -> list[str]:
    """Markdown: the mean over seeds (with the seeds' range), then each seed with its 95% bootstrap intervals."""
    seeds = [r["seed"] for r in results[0]]
    summary = ["| row | model | epsilon | sigma | balanced acc. mean (seed range) | AUROC mean (seed range) | ECE mean "
               "| seizures per seed | seconds (all seeds) |", "|---|---|---|---|---|---|---|---|---|"]
    per_seed = ["| row | model | epsilon | " + " | ".join(f"seed {s}: BA [95% CI] / AUROC [95% CI]" for s in seeds) + " |",
                "|---|---|---|" + "---|" * len(seeds)]
    for runs in results:
        first = runs[0]
        sigma = sorted({round(s, 2) for r in runs for s in r.get("sigma", [])})
        sigma_text = "-" if not sigma else f"{sigma[0]:.2f}" if len(sigma) == 1 else f"{sigma[0]:.2f}-{sigma[-1]:.2f}"
        name = [first["row"], model_label(first["temporal"]),
                "non-DP" if first["epsilon"] is None else f"{first['epsilon']:g}"]
        cells = list(name) + [sigma_text]
        for metric in ("balanced_accuracy", "auroc"):
            values = [r[metric] for r in runs]
            cells.append(f"**{np.mean(values):.3f}** ({min(values):.2f}-{max(values):.2f})")
        cells += [f"{np.mean([r['ece'] for r in runs]):.3f}", str(first["n_seizures"]),
                  f"{sum(r['seconds'] for r in runs):.0f}"]
        summary.append("| " + " | ".join(cells) + " |")
        per_seed.append("| " + " | ".join(name + [
            " / ".join(f"{r[m]:.3f} [{r['ci95'][m][0]:.2f}, {r['ci95'][m][1]:.2f}]" for m in ("balanced_accuracy", "auroc"))
            for r in runs]) + " |")
    return summary + ["", "Per seed:", ""] + per_seed


def table_with_ece(results: list[list[dict]]) -> list[str]:
    """Markdown: balanced accuracy, AUROC and ECE with 95% bootstrap intervals, one column group per seed, then the mean."""
    seeds = [r["seed"] for r in results[0]]
    metrics = (("balanced_accuracy", "BA"), ("auroc", "AUROC"), ("ece", "ECE"))
    head = ["row", "epsilon", "sigma (site sigma)"]
    head += [f"{label} seed {s} [95% CI]" for s in seeds for _, label in metrics]
    if len(seeds) > 1:
        head += [f"{label} mean (seed range)" for _, label in metrics]
    out = ["| " + " | ".join(head + ["seconds"]) + " |", "|" + "---|" * (len(head) + 1)]
    for runs in results:
        first = runs[0]

        def spread(key: str) -> str:
            values = sorted({round(v, 2) for r in runs for v in r.get(key, [])})
            return "-" if not values else f"{values[0]:.2f}" if len(values) == 1 else f"{values[0]:.2f}-{values[-1]:.2f}"

        sigma = spread("sigma") + (f" ({spread('site_sigma')})" if any(r.get("site_sigma") for r in runs) else "")
        cells = [first["row"], "non-DP" if first["epsilon"] is None else f"{first['epsilon']:g}", sigma]
        cells += [f"{r[m]:.3f} [{r['ci95'][m][0]:.2f}, {r['ci95'][m][1]:.2f}]" for r in runs for m, _ in metrics]
        if len(seeds) > 1:
            cells += [f"**{np.mean([r[m] for r in runs]):.3f}** ({min(r[m] for r in runs):.2f}-{max(r[m] for r in runs):.2f})"
                      for m, _ in metrics]
        out.append("| " + " | ".join(cells + [f"{sum(r['seconds'] for r in runs):.0f}"]) + " |")
    return out


def cohort_line(cohort: str, site_dirs: Sequence[Path]) -> str:
    """Sites, patients, seizures and labels of a cohort (and the demo's phantom seed, if its report is beside them)."""
    report = site_dirs[0].parent.parent / "report.json"
    origin = ""
    if cohort == "held-out" and report.is_file():
        config = json.loads(report.read_text())["config"]
        origin = f" (the sites of a `semiofed demo` run, phantom seed {config['seed']}; never used for tuning)"
    parts = []
    for d in site_dirs:
        records = load_site_records(open_site(d), DEFAULT_MODEL.labels)
        labels = [r.label for r in records]
        parts.append(f"{d.name}: {len({r.patient_pseudonym for r in records})} patients, {len(records)} seizures "
                     f"({', '.join(f'{l} {labels.count(l)}' for l in DEFAULT_MODEL.labels)})")
    return f"{cohort} cohort{origin}: " + "; ".join(parts)


def scale_cohort_line(name: str, site_dirs: Sequence[Path]) -> tuple[str, str]:
    """Sites, patients, seizures, labels and phantom seed of a `bench/utility_cohorts.py` cohort (per site in brief)."""
    summary_path = site_dirs[0].parent.parent / "cohort.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    seed = summary.get("seed", "?")
    planned = summary.get("settings", {}).get("generate", {}).get("patients")
    failed = (f"; {planned} patients planned, {summary['failed']} video(s) failed `site prepare` (no person detected) "
              "and are not in the store" if planned and summary.get("failed") else "")
    per_site, labels, patients = [], [], 0
    for d in site_dirs:
        records = load_site_records(open_site(d), DEFAULT_MODEL.labels)
        site_labels = [r.label for r in records]
        n = len({r.patient_pseudonym for r in records})
        patients += n
        labels += site_labels
        per_site.append(f"{d.name} {n}/{len(records)} ({'/'.join(str(site_labels.count(lab)) for lab in DEFAULT_MODEL.labels)})")
    counts = ", ".join(f"{lab} {labels.count(lab)}" for lab in DEFAULT_MODEL.labels)
    return (f"{name}: {len(site_dirs)} sites, {patients} patients, {len(labels)} seizures ({counts}), phantom seed {seed} "
            f"(built by `bench/utility_cohorts.py`; never used for tuning{failed})", "per site patients/seizures ("
            + "/".join(DEFAULT_MODEL.labels) + "): " + "; ".join(per_site))


def reading(results: list[list[dict]]) -> list[str]:
    """The issue's targets against the held-out means (balanced accuracy), and the comparisons that matter."""
    mean = {(r[0]["row"], r[0]["epsilon"], r[0]["temporal"]): float(np.mean([x["balanced_accuracy"] for x in r]))
            for r in results}
    default = DEFAULT_MODEL.temporal
    central = mean[(CENTRALISED, None, default)]
    lines = [f"- Target centralised non-DP >= 0.95: {central:.3f}, {'met' if central >= 0.95 else '**not met**'}."]
    for row in (DISTRIBUTED, FEDERATED):
        if (row, 8.0, default) in mean:
            fed8 = mean[(row, 8.0, default)]
            lines.append(f"- Target {row} DP at epsilon 8 within 0.03 of centralised: {fed8:.3f} vs {central:.3f} "
                         f"(gap {central - fed8:.3f}), {'met' if central - fed8 <= 0.03 else '**not met**'}.")
        if (row, 3.0, default) in mean:
            fed3 = mean[(row, 3.0, default)]
            lines.append(f"- Target {row} DP at epsilon 3 >= 0.90: {fed3:.3f}, {'met' if fed3 >= 0.90 else '**not met**'}.")
    pairs = [(e, mean[(FEDERATED, e, default)], mean[(LOCAL, e, default)]) for e in sorted({k[1] for k in mean if k[1]})
             if (FEDERATED, e, default) in mean and (LOCAL, e, default) in mean]
    if pairs:
        lines.append("- Federated vs local-only at the same per-site epsilon: "
                     + "; ".join(f"epsilon {e:g}: {f:.3f} vs {loc:.3f}" for e, f, loc in pairs) + ".")
    other = [(row, mean[(row, 8.0, default)], mean[(row, 8.0, ALTERNATIVE)]) for row in (FEDERATED, LOCAL)
             if (row, 8.0, ALTERNATIVE) in mean]
    if other:
        lines.append(f"- The default ({model_label(default)}) vs {model_label(ALTERNATIVE)} at epsilon 8: "
                     + "; ".join(f"{row} {g:.3f} vs {alt:.3f}" for row, g, alt in other) + ".")
    widths = [(x["ci95"]["balanced_accuracy"][1] - x["ci95"]["balanced_accuracy"][0]) / 2 for r in results for x in r]
    width = np.mean([w for w in widths if w > 0])  # a model that predicts one class has an interval of width 0
    lines.append(f"- Each seed pools {results[0][0]['n_seizures']} held-out seizures: the 95% intervals of balanced "
                 f"accuracy are about +-{width:.2f} wide, so differences smaller than that are not resolved here.")
    spread = {(r[0]["row"], r[0]["epsilon"], r[0]["temporal"]): [x["balanced_accuracy"] for x in r] for r in results}
    central_seeds = spread[(CENTRALISED, None, default)]
    if len(central_seeds) < 2:
        lines.append("- One split seed only: the seed-to-seed spread (up to 0.22 on the 83-patient cohort) is not measured "
                     "here; read each figure with its interval.")
        return lines
    lines.append(f"- The split seed alone moves one setting's balanced accuracy by up to "
                 f"{max(max(v) - min(v) for v in spread.values()):.2f} (centralised: {min(central_seeds):.3f}-"
                 f"{max(central_seeds):.3f}): read the means over seeds.")
    return lines


def model_text(distributed_sites: str) -> str:
    """The model, schedule and rows paragraph; `distributed_sites` names K (one number, or per cohort)."""
    n_params = parameter_count(build_classifier(classifier_config(FederationConfig()), seed=0))
    return (
        f"Model: the default (`common/learning/spec.py`), untuned: "
        + (f"a GRU with {DEFAULT_MODEL.hidden} hidden units" if DEFAULT_MODEL.temporal == TEMPORAL_GRU else
           "a linear head on each window" if DEFAULT_MODEL.temporal == TEMPORAL_LINEAR else f"`{DEFAULT_MODEL.temporal}`")
        + " on the "
        f"keypoint stream (the {len(DEFAULT_MODEL.descriptors)} per-window motion descriptors of "
        f"`common/records/motion.py` the spec names, chosen on the design cohort), {n_params} parameters; "
        f"Adam lr {DEFAULT_SCHEDULE.lr:g}, {DEFAULT_SCHEDULE.batch_patients} patients per step expected (q = 1 at every DP "
        "site), clipping norm 1.0, delta 1e-5, PRV accountant, patient-level DP. Centralised and local-only: "
        f"{DEFAULT_SCHEDULE.epochs} epochs; federated: FedAvg (weights averaged by training patients, as the strategy) "
        f"of {ROUNDS} rounds x {LOCAL_EPOCHS} local epochs of each site's real budgeted DP round (`SiteTask.fit`, in "
        "process), each site choosing sigma for its allowance `site_epsilon` = epsilon (local DP: every update carries "
        f"the full noise). federated-distributed: distributed DP (`--dp-mode distributed`), {DISTRIBUTED_ROUNDS} rounds "
        f"of one DP step at each site, each site adding sigma/sqrt(K - 1) with {distributed_sites} (its policy: "
        "`distributed_dp_sites` = K, every sum holds all K sites; 1 colluder tolerated, the default), the "
        "patient-weighted sum stepped by Flower's own FedAdam (eta = server_lr 0.05) as the ServerApp "
        f"does; sigma is what every site's ledger charges. `{model_label(ALTERNATIVE)}`: the same rows with "
        f"`--temporal {ALTERNATIVE}`. Every DP setting in fresh scratch copies of the sites (fresh budgets).")


def _per_cohort(values: Sequence[str], parser: argparse.ArgumentParser, flag: str) -> dict[str, list[float]]:
    out = {}
    for value in values:
        name, _, numbers = value.partition("=")
        if not numbers:
            parser.error(f"{flag} takes NAME=V,V (got {value!r})")
        out[name] = [float(v) for v in numbers.split(",")]
    return out


def scale_section(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """Issue 13's held-out cohorts (`--cohort NAME=SITES_DIR`, from bench/utility_cohorts.py): one table per cohort,
    every model's threshold and scale set on the public reference seizures; the section's text."""
    if args.reference is None:
        parser.error("--cohort needs --reference (the public reference seizures set every model's threshold)")
    cohorts = []
    for value in args.cohort:
        name, _, folder = value.partition("=")
        if not folder:
            parser.error(f"--cohort takes NAME=SITES_DIR (got {value!r})")
        cohorts.append((name, sorted(d for d in Path(folder).iterdir() if (d / "site.json").is_file())))
    seeds = {k: [int(v) for v in vs] for k, vs in _per_cohort(args.cohort_seeds, parser, "--cohort-seeds").items()}
    distributed = _per_cohort(args.distributed_epsilons, parser, "--distributed-epsilons")
    labels, streams = DEFAULT_MODEL.labels, DEFAULT_MODEL.streams
    patients = group_patients(load_site_records(open_site(args.reference), labels), labels, streams)
    reference = [s for p in patients for s in p.seizures]
    command = ["python bench/bench_utility.py", *(f"--cohort {c}" for c in args.cohort), f"--reference {args.reference}"]
    command += [f"--cohort-seeds {c}" for c in args.cohort_seeds] + [f"--distributed-epsilons {c}" for c in args.distributed_epsilons]
    command += [f"--note {args.note}"] if args.note is not None else []
    command += ["--seeds", *map(str, args.seeds), "--epsilons", *(f"{e:g}" for e in args.epsilons), "--write"]
    ks = ", ".join(f"K = {len(dirs)} for {name}" for name, dirs in cohorts)
    body = [
        f"`{' '.join(command)}` (cohorts built first by `python bench/utility_cohorts.py`)",
        "",
        "Cohorts: phantom hospitals built as `semiofed demo` builds its sites (`DemoConfig.phantom()` of the non-quick "
        "demo: one seizure per patient, 10-12 s seizures with 1-2 s of video before and after, 320x240, the demo's site "
        "presets), on phantom seeds never used before and not tuned on, each site through the real `site init` + "
        "`site prepare` (MediaPipe pose, the stream the model reads). The decision threshold and scale of every model "
        f"are set on the demo's {len(reference)} public reference seizures (`DemoConfig(seed=0).reference()`, phantom "
        f"seed {REFERENCE_SEED}; `semiofed demo`'s `calibrate`, no privacy cost).",
        "",
        model_text(ks),
        "",
        f"Protocol: patient-grouped {HELD_OUT_FOLDS} folds per site, no validation fold (temperature 1), each fold the "
        "test set once (every patient tested once per split seed); all sites' test predictions of both folds pooled "
        "into balanced accuracy and AUROC with 95% percentile bootstrap intervals over seizures, and ECE. The seed fixes "
        "the split and the initial weights; DP noise and sampling come from the OS's secure random source (as in "
        "production), so a DP row also moves between runs of the same seed. Seconds: wall time on the 2-core CPU shared "
        "with another engineer's jobs (run under `nice`; it varies with their load).",
        "",
    ]
    means: dict[str, dict[tuple[str, float | None], float]] = {}
    for name, site_dirs in cohorts:
        cohort_seeds = seeds.get(name, args.seeds)
        plan = settings(name, args.epsilons, compare_other=False, distributed_epsilons=distributed.get(name))
        results = [[run_setting(name, site_dirs, row, eps, temporal, seed, reference) for seed in cohort_seeds]
                   for row, eps, temporal in plan]
        means[name] = {(r[0]["row"], r[0]["epsilon"]): float(np.mean([x["balanced_accuracy"] for x in r])) for r in results}
        total = sum(r["seconds"] for per_seed in results for r in per_seed)
        headline, per_site = scale_cohort_line(name, site_dirs)
        body += [f"**{headline}**; split seed{'s' if len(cohort_seeds) > 1 else ''} {', '.join(map(str, cohort_seeds))}; "
                 f"K = {len(site_dirs)} for the distributed row. Run time {total:.0f} s.", "", per_site + ".", "",
                 *table_with_ece(results), "", f"Reading ({name}; balanced accuracy, mean over seeds):", "", *reading(results), ""]
    body += ["How the cohorts differ (balanced accuracy, mean over seeds; the 3-site, 83-patient cohort is in the section "
             "\"Utility of the DP model (motion descriptors, GRU)\"):", "", *scale_reading(cohorts, means), ""]
    if args.note is not None:
        body += [args.note.read_text(encoding="utf-8").strip(), ""]
    return "\n".join(body)


def scale_reading(cohorts: Sequence[tuple[str, list[Path]]], means: dict[str, dict]) -> list[str]:
    """How the cohorts differ: the noise each site adds under distributed DP, and patients per site for local-only."""
    lines = []
    for name, site_dirs in cohorts:
        k = len(site_dirs)
        m = means[name]
        patients = [len({r.patient_pseudonym for r in load_site_records(open_site(d), DEFAULT_MODEL.labels)}) for d in site_dirs]
        row = [f"{name} (K = {k}, {min(patients)}-{max(patients)} patients per site, about {sum(patients) / k / 2:.1f} "
               f"training patients per site and {sum(patients) / 2:.0f} in all per fold): each site adds "
               f"sigma/sqrt({k - 1}) = {1 / np.sqrt(k - 1):.2f} sigma, the sum carries "
               f"{np.sqrt(k / (k - 1)):.2f} sigma"]
        for eps in sorted({e for (_, e) in m if isinstance(e, float)}):
            cells = [f"{label} {m[(r, eps)]:.3f}" for r, label in ((DISTRIBUTED, "distributed"), (FEDERATED, "federated"),
                                                                   (LOCAL, "local-only")) if (r, eps) in m]
            row.append(f"epsilon {eps:g}: " + ", ".join(cells))
        row.append(f"centralised {m[(CENTRALISED, None)]:.3f}")
        lines.append("- " + "; ".join(row) + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=Path, help="a demo's sites/ folder (one sub-folder per site)")
    parser.add_argument("--cohort", action="append", default=[], metavar="NAME=SITES_DIR",
                        help="a held-out cohort of bench/utility_cohorts.py (repeatable); with --write, the section "
                             "'utility-scale' (every model with the --reference threshold, no rows of the other model)")
    parser.add_argument("--cohort-seeds", action="append", default=[], metavar="NAME=S,S",
                        help="split seeds for one --cohort (default --seeds)")
    parser.add_argument("--distributed-epsilons", action="append", default=[], metavar="NAME=E,E",
                        help="the epsilons of the federated-distributed row for one --cohort (default --epsilons)")
    parser.add_argument("--note", type=Path, help="with --cohort: a Markdown file of reading appended to the section")
    parser.add_argument("--dev", type=Path, help="the dev cohort's site")
    parser.add_argument("--reference", type=Path,
                        help="a site of public reference seizures (a demo's reference-site/): the held-out models are "
                             "also measured with their decision threshold and scale set on them, as the demo does")
    parser.add_argument("--reference-only", action="store_true",
                        help="with --reference, measure the held-out models only with the reference threshold")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--write", action="store_true",
                        help="write the section 'utility-motion' (or, with --cohort, 'utility-scale') of docs/benchmarks.md")
    args = parser.parse_args()
    if args.held_out is None and args.dev is None and not args.cohort:
        parser.error("give --held-out DIR (a demo's sites/), --cohort NAME=SITES_DIR and/or --dev SITE_DIR")
    if args.cohort and (args.held_out is not None or args.dev is not None):
        parser.error("--cohort writes its own section: run it without --held-out and --dev")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("semiofed").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    fast_ledger.install()  # memoised ledger verification, no fsync: same values, ~3x faster rounds (bench/fast_ledger.py)
    if args.cohort:
        text = scale_section(args, parser)
        print(text)
        if args.write:
            write_section("utility-scale", "Utility at 3 and 10 sites, 30 and 150 patients (issue 13)", text)
        return
    cohorts: list[tuple[str, list[Path], list[Seizure]]] = []
    held_out_dirs: list[Path] = []
    if args.held_out is not None:
        held_out_dirs = sorted(d for d in args.held_out.iterdir() if (d / "site.json").is_file())
        if not (args.reference_only and args.reference is not None):
            cohorts.append(("held-out", held_out_dirs, []))
        if args.reference is not None:
            labels, streams = DEFAULT_MODEL.labels, DEFAULT_MODEL.streams
            patients = group_patients(load_site_records(open_site(args.reference), labels), labels, streams)
            cohorts.append(("held-out", held_out_dirs, [s for p in patients for s in p.seizures]))
    if args.dev is not None:
        cohorts.append(("dev", [args.dev], []))
    command = ["python bench/bench_utility.py"] + [f"--{flag} {path}" for flag, path in
                                                    (("held-out", args.held_out), ("dev", args.dev),
                                                     ("reference", args.reference)) if path]
    command += ["--reference-only"] if args.reference_only else []
    command += ["--seeds", *map(str, args.seeds), "--epsilons", *(f"{e:g}" for e in args.epsilons), "--write"]
    body = [
        f"`{' '.join(command)}`",
        "",
        model_text(f"K = {len(held_out_dirs) or 3}"),
        "",
        f"Protocol: held-out cohort: patient-grouped {HELD_OUT_FOLDS} folds per site, no validation fold (temperature "
        "1), each fold the test set once (every patient tested once per split seed); dev cohort: patient-grouped "
        f"{DEV_FOLDS}-fold `cross_validate`, no validation fold, DP at the noise that brings one fold's model to epsilon. "
        f"Metrics over all held-out seizures pooled, per split seed ({', '.join(map(str, args.seeds))}) with 95% "
        "percentile bootstrap intervals over seizures, and their mean over seeds. The seed fixes the split and the "
        "initial weights; DP noise and sampling come from the OS's secure random source (as in production), so a DP "
        "row also moves between runs of the same seed. Seconds: wall time on a 2-core CPU "
        "shared with other jobs (it varies with their load).",
        "",
    ]
    for cohort, site_dirs, reference in cohorts:
        results = [[run_setting(cohort, site_dirs, row, eps, temporal, seed, reference) for seed in args.seeds]
                   for row, eps, temporal in settings(cohort, args.epsilons)]
        total = sum(r["seconds"] for per_seed in results for r in per_seed)
        decision = (f"decision threshold and scale of every model set on the {len(reference)} public reference seizures "
                    "(`semiofed demo`'s `calibrate`, no privacy cost)" if reference else "the models' own heads (no "
                    "reference calibration)")
        body += [f"**{cohort_line(cohort, site_dirs)}**; {decision}. Run time {total:.0f} s.", "", *table(results), ""]
        if cohort == "held-out":
            body += [f"Reading ({decision.split(' (')[0]}; balanced accuracy, mean over seeds):", "", *reading(results), ""]
    if args.dev is not None:
        body.append("The dev cohort was used to design the descriptors and the training recipe: its figures are not "
                    "held-out estimates.")
    text = "\n".join(body)
    print(text)
    if args.write:
        write_section("utility-motion", "Utility of the DP model (motion descriptors, GRU)", text)


if __name__ == "__main__":
    main()
