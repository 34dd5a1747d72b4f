"""Patient-grouped k-fold cross-validation at one site, every fold charged to the site's privacy budget.

Fold k is the test set, fold k+1 the validation set (temperature scaling),
the other folds train; no patient is in two folds of one split, and every
patient is tested exactly once. Under DP every fold trains on (most of) the
same patients, so each fold's steps compose on the site's accountant: the
spend of all folds together is checked against the budget before the first
step, and `--epsilon` picks one noise multiplier for all folds together.
Each DP fold is signed into the site's privacy ledger (its discarded model
named by the sha256 of its weights), so the auditor sees every spend.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from semiofed.client.training.local import (
    LocalTrainingOptions,
    calibrated_test_predictions,
    fit_model,
    site_patients,
    split_patients,
)
from semiofed.common.errors import SemiofedError
from semiofed.common.learning.classifier import build_classifier
from semiofed.common.learning.metrics import classification_report
from semiofed.common.learning.trainer import Patient, TrainConfig
from semiofed.common.privacy.accountant import PlannedRun, PrivacyBudgetError, SiteAccountant

log = logging.getLogger(__name__)

Split = tuple[list[Patient], list[Patient], list[Patient]]


@dataclass
class FoldResult:
    """One fold: who was in it, how it trained, and its test metrics (after temperature scaling)."""

    fold: int
    n_patients: dict[str, int]
    n_seizures: dict[str, int]
    test_patients: tuple[str, ...]
    sample_rate: float
    steps: int
    temperature: float
    test_metrics: dict[str, Any]


@dataclass
class CrossValidationResult:
    """Every fold's result, the metrics pooled over all test seizures, and what the folds spent."""

    folds: list[FoldResult]
    pooled_metrics: dict[str, Any]
    dp: bool
    noise_multiplier: float | None
    delta: float | None
    epsilon_before: float | None
    epsilon_planned: float | None
    epsilon_spent: float | None
    epsilon_max: float | None
    seconds: float = 0.0
    # calibrated test probabilities [N, C] and labels of every seizure, in fold order (for pooled figures)
    pooled_labels: list[int] = field(default_factory=list, repr=False)
    pooled_probs: np.ndarray | None = field(default=None, repr=False)


def fold_splits(patients: Sequence[Patient], folds: int, seed: int, *, validation: bool = True) -> list[Split]:
    """(train, validation, test) for each fold k: test = fold k, validation = fold k+1 (or none), training = the rest."""
    return [split_patients(patients, folds, k, seed, validation=validation) for k in range(folds)]


def projected_epsilon(accountant: SiteAccountant, runs: Sequence[PlannedRun]) -> float:
    """Site epsilon after the accountant's history plus all `runs` (nothing is recorded)."""
    return accountant.projected_epsilon_of(runs)


def noise_for_folds(accountant: SiteAccountant, *, target_epsilon: float, runs: Sequence[tuple[float, int]],
                    tolerance: float = 0.02) -> float:
    """The least sigma (>= the policy minimum) keeping the site's epsilon <= target after all (q, steps) runs."""
    # One run at the largest q for all the steps spends at least as much as the folds (epsilon grows with q
    # and steps), so its sigma is feasible: it brackets the search, refined with the folds' exact composition.
    high = accountant.noise_for(target_epsilon=target_epsilon, sample_rate=max(q for q, _ in runs),
                                steps=sum(s for _, s in runs))
    target = min(target_epsilon, accountant.policy.max_epsilon)
    floor = accountant.policy.min_noise_multiplier

    def fits(sigma: float) -> bool:
        return projected_epsilon(accountant, [PlannedRun(sigma, q, s) for q, s in runs]) <= target

    low = high
    while low > floor:  # walk down until a sigma no longer fits (or the policy floor is reached)
        low = max(0.7 * low, floor)
        if not fits(low):
            break
        high = low
    else:
        return high
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high


def _span(values: Sequence[float], spec: str) -> str:
    low, high = min(values), max(values)
    return format(low, spec) if format(low, spec) == format(high, spec) else f"{format(low, spec)}-{format(high, spec)}"


def _refuse(accountant: SiteAccountant, sigma: float, runs: Sequence[PlannedRun]) -> float:
    """Raise before any step unless all folds together fit the site's policy; return the projected epsilon."""
    policy = accountant.policy
    if sigma < policy.min_noise_multiplier:
        raise PrivacyBudgetError(
            f"noise multiplier {sigma:.3f} is below this site's minimum {policy.min_noise_multiplier}",
            f"use --noise-multiplier >= {policy.min_noise_multiplier}, or --epsilon to let semiofed choose",
        )
    spent = accountant.epsilon_spent()
    projected = projected_epsilon(accountant, runs)
    if projected > policy.max_epsilon:
        steps = _span([r.steps for r in runs], "d")
        rates = _span([r.sample_rate for r in runs], ".4f")
        raise PrivacyBudgetError(
            f"cross-validation refused before any step: {len(runs)} folds of {steps} steps "
            f"({sum(r.steps for r in runs)} in all) at noise multiplier {sigma:.3f} and patient sampling rate "
            f"{rates} would bring epsilon from {spent:.3f} to {projected:.3f} (delta "
            f"{accountant.delta:g}), above this site's maximum {policy.max_epsilon:g}; every fold trains on the same "
            "patients, so every fold is charged",
            "use fewer folds or epochs, raise --noise-multiplier, or pass --epsilon (the site's total after all "
            f"folds, at most {policy.max_epsilon:g}) to let semiofed choose the noise for all folds together",
        )
    return projected


def cross_validate(
    site_dir: Path,
    options: LocalTrainingOptions,
    *,
    on_fold: Callable[[FoldResult], None] | None = None,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
) -> CrossValidationResult:
    """Train and evaluate one model per patient fold; DP folds are checked together and each recorded in the budget.

    `options.test_fold` and `options.run_name` are not used (every fold is tested once; no checkpoint is written:
    cross-validation estimates performance, `site train` makes the model to use).
    """
    started = time.monotonic()
    site, extractor, patients = site_patients(site_dir, options)
    policy = site.policy
    if len(patients) < options.folds:
        raise SemiofedError(f"{len(patients)} patients cannot fill {options.folds} patient folds",
                            f"use --folds {max(len(patients), 3)} or fewer (at least 3), or add patients")
    splits = fold_splits(patients, options.folds, options.seed, validation=options.validation)
    base = TrainConfig(epochs=options.epochs, batch_patients=options.batch_patients, lr=options.lr,
                       optimizer=options.optimizer, dp=options.dp,
                       clipping_norm=policy.clipping_norm, seed=options.seed)
    plan = [(base.sample_rate(len(train)), base.steps(len(train))) for train, _, _ in splits]
    options.class_weights_for(splits[0][0])  # a wrong number of weights is refused before the budget is touched

    accountant = site.privacy.accountant() if options.dp else None  # never behind the signed ledger
    sigma: float | None = None
    before = planned = None
    if accountant is not None:
        if options.epsilon is not None:
            sigma = noise_for_folds(accountant, target_epsilon=options.epsilon, runs=plan)
        else:
            sigma = options.noise_multiplier if options.noise_multiplier is not None else policy.min_noise_multiplier
        before = accountant.epsilon_spent()
        planned = _refuse(accountant, sigma, [PlannedRun(sigma, q, steps) for q, steps in plan])
        site.privacy.check_appendable()  # each fold is signed into the ledger: refuse now if it cannot take entries
        log.info("cross-validation: %d folds at sigma %.3f will bring epsilon from %.3f to %.3f", options.folds,
                 sigma, before, planned)
    run_id = time.strftime("cv-%Y%m%dT%H%M%SZ", time.gmtime())

    model_config = options.classifier_config(extractor)
    results: list[FoldResult] = []
    pooled_labels: list[int] = []
    pooled_probs: list[np.ndarray] = []
    for k, ((train, val, test), (q, steps)) in enumerate(zip(splits, plan)):
        config = replace(base, class_weights=options.class_weights_for(train),
                         noise_multiplier=sigma if sigma is not None else base.noise_multiplier)
        model = build_classifier(model_config, seed=options.seed)
        epoch_hook = (lambda epoch, stats, k=k: on_epoch(k, epoch, stats)) if on_epoch is not None else None
        # the fold's model is discarded, but its steps were spent: the ledger shows every spend to the auditor
        taken = fit_model(site, model, config, train,
                          planned=PlannedRun(config.noise_multiplier, q, steps) if accountant is not None else None,
                          run_id=f"{run_id}-fold{k + 1}", note=f"cross-validation fold {k + 1}/{options.folds}",
                          n_segments=options.n_segments, steps=steps, on_epoch=epoch_hook)

        temperature, labels, probs = calibrated_test_predictions(model, val, test, n_segments=options.n_segments)
        pooled_labels += labels
        pooled_probs.append(probs)
        result = FoldResult(
            fold=k,
            n_patients={"train": len(train), "validation": len(val), "test": len(test)},
            n_seizures={"train": sum(len(p.seizures) for p in train), "validation": sum(len(p.seizures) for p in val),
                        "test": len(labels)},
            test_patients=tuple(p.pseudonym for p in test), sample_rate=q, steps=taken, temperature=temperature,
            test_metrics=classification_report(labels, probs),
        )
        results.append(result)
        log.info("fold %d/%d: %s", k + 1, options.folds, {m: result.test_metrics[m] for m in ("accuracy", "auroc")})
        if on_fold is not None:
            on_fold(result)

    probs_all = np.concatenate(pooled_probs)
    return CrossValidationResult(
        folds=results, pooled_metrics=classification_report(pooled_labels, probs_all), dp=options.dp,
        noise_multiplier=sigma, delta=policy.target_delta if options.dp else None, epsilon_before=before,
        epsilon_planned=planned, epsilon_spent=site.privacy.accountant().epsilon_spent() if accountant is not None else None,
        epsilon_max=policy.max_epsilon if options.dp else None, seconds=time.monotonic() - started,
        pooled_labels=pooled_labels, pooled_probs=probs_all,
    )


__all__ = ["FoldResult", "CrossValidationResult", "cross_validate", "fold_splits", "projected_epsilon", "noise_for_folds"]
