"""Local training at one site: records -> patient split -> DP-SGD under the site budget -> checkpoint."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from semiofed.client.site import Site, open_site
from semiofed.common.errors import SemiofedError
from semiofed.common.learning.calibration import fit_temperature
from semiofed.common.learning.checkpoint import save_checkpoint
from semiofed.common.learning.classifier import ClassifierConfig, build_classifier, parameter_count
from semiofed.common.learning.metrics import classification_report, patient_group_kfold, softmax
from semiofed.common.learning.spec import DEFAULT_MODEL, DEFAULT_SCHEDULE, ModelSpec
from semiofed.common.learning.trainer import Patient, Seizure, TrainConfig, Trainer, balanced_class_weights, predict_logits
from semiofed.common.records.side import SIDES
from semiofed.common.learning.weights import get_weights
from semiofed.common.privacy.accountant import PlannedRun
from semiofed.client.training.site_split import split_site_patients
from semiofed.common.privacy.budgeted_run import budgeted_run
from semiofed.common.privacy.ledger import KIND_LOCAL
from semiofed.common.privacy.policy import NEIGHBOURING_RELATION, PRIVACY_UNIT
from semiofed.common.records.features import feature_extractor_of, record_inputs
from semiofed.common.records.schema import META_FILE, STATUS_OK, SeizureRecord, read_meta, read_record

log = logging.getLogger(__name__)

CLASS_WEIGHTS_BALANCED = "balanced"


@dataclass(frozen=True)
class LocalTrainingOptions:
    """What `semiofed site train` asks for; validated once."""

    epochs: int = DEFAULT_SCHEDULE.epochs
    batch_patients: int = DEFAULT_SCHEDULE.batch_patients
    lr: float = DEFAULT_SCHEDULE.lr
    optimizer: str = DEFAULT_SCHEDULE.optimizer
    dp: bool = True
    # None: the site policy's minimum noise, unless `epsilon` asks semiofed to choose it
    noise_multiplier: float | None = None
    # total epsilon this site may have spent after this run; sigma is chosen to reach it
    epsilon: float | None = None
    labels: tuple[str, ...] = DEFAULT_MODEL.labels
    streams: tuple[str, ...] = DEFAULT_MODEL.streams
    temporal: str = DEFAULT_MODEL.temporal
    hidden: int = DEFAULT_MODEL.hidden
    embed_dim: int = DEFAULT_MODEL.embed_dim
    n_segments: int = DEFAULT_MODEL.n_segments
    descriptors: tuple[str, ...] = DEFAULT_MODEL.descriptors
    # "balanced" (non-private, refused under DP), explicit public weights, or None
    class_weights: str | tuple[float, ...] | None = None
    folds: int = 5
    test_fold: int = 0
    # a validation fold for temperature scaling (calibration only: it never moves the decision); without it
    # every patient outside the test fold trains
    validation: bool = True
    seed: int = 0
    run_name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "descriptors", self.model_spec.descriptors)  # 'all' or names, checked
        if self.dp and self.noise_multiplier is not None and self.epsilon is not None:
            raise SemiofedError("both --noise-multiplier and --epsilon were given", "give one: the noise, or the epsilon to reach")
        if isinstance(self.class_weights, str) and self.class_weights != CLASS_WEIGHTS_BALANCED:
            raise SemiofedError(f"class weights '{self.class_weights}' not understood", "use 'balanced' or numbers like 1,2.5")
        if self.dp and self.class_weights == CLASS_WEIGHTS_BALANCED:
            raise SemiofedError(
                "balanced class weights are computed from the private label counts, which DP-SGD does not cover",
                "give public weights (e.g. --class-weights 1,2 from the literature's FOS:TCS ratio) or use --no-dp",
            )
        least = 3 if self.validation else 2
        if self.folds < least or not (0 <= self.test_fold < self.folds):
            raise SemiofedError(f"folds={self.folds}, test_fold={self.test_fold}",
                                f"use folds >= {least} (test, {'validation, ' if self.validation else ''}training) "
                                "and 0 <= test_fold < folds")

    @property
    def model_spec(self) -> ModelSpec:
        """The model this run trains."""
        return ModelSpec(labels=self.labels, streams=self.streams, temporal=self.temporal, hidden=self.hidden,
                         embed_dim=self.embed_dim, n_segments=self.n_segments,
                         descriptors=self.descriptors)

    def classifier_config(self, extractor: dict[str, Any]) -> ClassifierConfig:
        """The classifier for records made with `extractor` (see `common_extractor`)."""
        return ClassifierConfig.from_spec(self.model_spec, stcnn_dim=int(extractor["dim"]))

    def class_weights_for(self, train: Sequence[Patient]) -> tuple[float, ...] | None:
        """The loss's class weights: public ones as given, or balanced from `train`'s labels (non-DP only)."""
        if self.class_weights == CLASS_WEIGHTS_BALANCED:
            return balanced_class_weights([s.label for p in train for s in p.seizures], len(self.labels))
        weights = self.class_weights
        if weights is not None and len(weights) != len(self.labels):
            raise SemiofedError(f"{len(weights)} class weights for {len(self.labels)} labels", "give one weight per label")
        return weights  # type: ignore[return-value]


@dataclass
class TrainResult:
    """What a local training run produced."""

    checkpoint: Path
    dp: bool
    epsilon_spent: float | None
    epsilon_max: float | None
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float
    steps: int
    temperature: float
    test_metrics: dict[str, Any]
    n_patients: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def load_site_records(site: Site, labels: Sequence[str]) -> list[SeizureRecord]:
    """Every usable record of the site whose label is in `labels` (others are skipped and logged)."""
    records_dir = site.layout.records_dir
    records, skipped = [], defaultdict(int)
    for directory in sorted(p for p in records_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if records_dir.is_dir() else []:
        if not (directory / META_FILE).is_file() or read_meta(directory).get("status") != STATUS_OK:
            continue
        record = read_record(directory)
        if record.label not in labels:
            skipped[record.label] += 1
            continue
        records.append(record)
    if skipped:
        log.warning("skipped records with labels outside %s: %s", list(labels), dict(skipped))
    if not records:
        raise SemiofedError(f"no records with labels {list(labels)} in {records_dir}",
                            "run `semiofed site prepare` first, or choose --labels matching the manifest")
    return records


def common_extractor(records: Sequence[SeizureRecord]) -> dict[str, Any]:
    """The one feature extractor (name, weights sha256, dim, input) all of the site's records were made with."""
    seen = {(r.stcnn, feature_extractor_of(r)["sha256"], r.feature_dim, r.stcnn_input) for r in records}
    if len(seen) > 1:
        raise SemiofedError(f"the site's records were made with different feature extractors {sorted(seen)}",
                            "re-run `semiofed site prepare` so all records use one STCNN")
    return feature_extractor_of(records[0])


def group_patients(records: Sequence[SeizureRecord], labels: Sequence[str], streams: Sequence[str]) -> list[Patient]:
    """Records grouped by patient pseudonym: the privacy unit."""
    by_patient: dict[str, list[Seizure]] = defaultdict(list)
    index = {label: i for i, label in enumerate(labels)}
    for r in records:
        side = SIDES.index(r.side) if r.side in SIDES else -1
        by_patient[r.patient_pseudonym].append(Seizure(record_inputs(r, streams), index[r.label], r.record_id, side))
    return [Patient(p, tuple(s)) for p, s in sorted(by_patient.items())]


def split_patients(patients: Sequence[Patient], folds: int, test_fold: int, seed: int, *,
                   validation: bool = True) -> tuple[list[Patient], list[Patient], list[Patient]]:
    """(train, validation, test) by patient: fold `test_fold` is the test set, the next one validation (or none)."""
    names = [p.pseudonym for p in patients]
    majority = [int(np.bincount([s.label for s in p.seizures]).argmax()) for p in patients]
    parts = patient_group_kfold(names, majority, folds, seed=seed)
    test = set(parts[test_fold])
    val = set(parts[(test_fold + 1) % folds]) if validation else set()
    train = [p for p in patients if p.pseudonym not in test and p.pseudonym not in val]
    return train, [p for p in patients if p.pseudonym in val], [p for p in patients if p.pseudonym in test]


def calibrated_test_predictions(model: Any, validation: Sequence[Patient], test: Sequence[Patient], *,
                                n_segments: int) -> tuple[float, list[int], np.ndarray]:
    """(temperature fitted on the validation patients, test labels, calibrated test probabilities)."""
    val_seizures = [s for p in validation for s in p.seizures]
    val_logits = predict_logits(model, val_seizures, n_segments=n_segments)
    temperature = fit_temperature(val_logits, np.array([s.label for s in val_seizures])) if val_seizures else 1.0
    test_seizures = [s for p in test for s in p.seizures]
    probs = softmax(predict_logits(model, test_seizures, n_segments=n_segments), temperature)
    return temperature, [s.label for s in test_seizures], probs


def site_patients(site_dir: Path, options: LocalTrainingOptions) -> tuple[Site, dict[str, Any], list[Patient]]:
    """The site, its records' feature extractor and its patients with records of `options.labels`."""
    site = open_site(site_dir)
    records = load_site_records(site, options.labels)
    return site, common_extractor(records), group_patients(records, options.labels, options.streams)


def fit_model(site: Site, model: Any, config: TrainConfig, train: Sequence[Patient], *, planned: PlannedRun | None,
              run_id: str, note: str, n_segments: int, steps: int,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> int:
    """Train `model`; under DP (`planned`) as one budgeted run whose release, signed in the ledger, is its weights."""
    trainer = Trainer(model, config, n_segments=n_segments)
    try:
        if planned is None:
            return trainer.fit(train, on_epoch=on_epoch, steps=steps)
        with budgeted_run(site.privacy, planned, kind=KIND_LOCAL, run_id=run_id, note=note) as run:
            taken = trainer.fit(train, on_step=run.step, on_epoch=on_epoch, steps=steps)
            run.release(get_weights(model))
        return taken
    finally:
        trainer.close()


def train_site(
    site_dir: Path,
    options: LocalTrainingOptions,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the classifier on this site's records only; DP runs are checked against and recorded in the budget."""
    started = time.monotonic()
    site, extractor, patients = site_patients(site_dir, options)
    policy = site.policy
    if len(patients) < 3:
        raise SemiofedError(f"this site has {len(patients)} patient(s) with records of the labels {', '.join(options.labels)}",
                            "training needs at least 3 patients (one each for training, validation and test): prepare more records")
    if len(patients) < options.folds:
        raise SemiofedError(f"{len(patients)} patients cannot fill {options.folds} patient folds",
                            f"use --folds {len(patients)} or fewer, or add patients")
    # the site's own folds (the same patients a federated run holds out at this seed): site_split.py
    train, val, test = split_site_patients(site, patients, options.folds, options.test_fold,
                                           validation=options.validation, split_seed=options.seed)
    weights = options.class_weights_for(train)

    config = TrainConfig(epochs=options.epochs, batch_patients=options.batch_patients, lr=options.lr,
                         optimizer=options.optimizer, dp=options.dp,
                         clipping_norm=policy.clipping_norm, class_weights=weights, seed=options.seed)
    q, steps = config.sample_rate(len(train)), config.steps(len(train))
    planned: PlannedRun | None = None
    if options.dp:
        accountant = site.privacy.accountant()  # never behind the signed ledger
        if options.epsilon is not None:
            sigma = accountant.noise_for(target_epsilon=options.epsilon, sample_rate=q, steps=steps)
        else:
            sigma = options.noise_multiplier if options.noise_multiplier is not None else policy.min_noise_multiplier
        config = replace(config, noise_multiplier=sigma)
        planned = PlannedRun(sigma, q, steps)
        accountant.check(planned)  # refuse before building or training anything
        site.privacy.check_appendable()  # a release that cannot be recorded is refused too

    model_config = options.classifier_config(extractor)
    model = build_classifier(model_config, seed=options.seed)
    log.info("training %s (%d parameters) on %d patients (%d seizures); validation %d, test %d patients",
             options.temporal, parameter_count(model), len(train), sum(len(p.seizures) for p in train), len(val), len(test))
    name = options.run_name or time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime())
    taken = fit_model(site, model, config, train, planned=planned, run_id=name, note=options.run_name or "",
                      n_segments=options.n_segments, steps=steps, on_epoch=on_epoch)

    temperature, test_labels, test_probs = calibrated_test_predictions(model, val, test, n_segments=options.n_segments)
    metrics = classification_report(test_labels, test_probs)

    summary = site.privacy.accountant().summary() if options.dp else None
    privacy = {
        "dp": options.dp,
        "privacy_unit": PRIVACY_UNIT,
        "neighbouring_relation": NEIGHBOURING_RELATION,
        "noise_multiplier": config.noise_multiplier if options.dp else None,
        "clipping_norm": config.clipping_norm,
        "sample_rate": q,
        "steps": taken,
        "site_epsilon_spent": summary["epsilon_spent"] if summary else None,
        "delta": policy.target_delta if options.dp else None,
        "accountant": summary["accountant"] if summary else None,
    }
    path = save_checkpoint(site.layout.checkpoints_dir / name, model, {
        "labels": list(options.labels),
        "streams": list(model_config.streams),
        "feature_extractor": extractor,
        "training": config.to_dict() | {"n_segments": options.n_segments, "folds": options.folds, "test_fold": options.test_fold},
        "privacy": privacy,
        "temperature": temperature,
        "metrics": {"test": metrics},
        "n_patients": {"train": len(train), "validation": len(val), "test": len(test)},
    })
    return TrainResult(checkpoint=path, dp=options.dp, epsilon_spent=privacy["site_epsilon_spent"],
                       epsilon_max=policy.max_epsilon if options.dp else None, delta=privacy["delta"],
                       noise_multiplier=privacy["noise_multiplier"], sample_rate=q, steps=taken, temperature=temperature,
                       test_metrics=metrics, n_patients={"train": len(train), "validation": len(val), "test": len(test)},
                       seconds=time.monotonic() - started)


def site_budget(site_dir: Path) -> dict[str, Any]:
    """Spent and remaining epsilon of a site."""
    site = open_site(site_dir)
    return site.privacy.accountant().summary()


__all__ = ["LocalTrainingOptions", "TrainResult", "train_site", "site_budget", "load_site_records", "group_patients",
           "split_patients"]
