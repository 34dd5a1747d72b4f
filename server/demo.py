"""`semiofed demo`: every role on one machine, on phantom seizure videos.

Hospitals: phantom videos -> `site prepare` (real MediaPipe pose, what the
default model reads) -> local DP baseline. Coordinator: a real local deployment (CA, enrolled site keys,
SuperLink with TLS and in-memory state, one site worker and SuperNode per site, started while the reference
seizures are prepared, SecAgg+) or Flower's simulation engine. Then the comparison: local-only (DP) vs federated
(DP) vs centralised (pooled, NOT private: what the federation tries to
approach), evaluated on the same held-out patients of every site; every
site's ledger audited; report.json and report.html written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol

import numpy as np

from semiofed.common.federation.run_config import FederationConfig

log = logging.getLogger(__name__)

MODE_DEPLOY, MODE_SIMULATION = "deploy", "simulation"
REFERENCE_SEED_OFFSET = 7919  # the reference patients are drawn apart from every site's


class Progress(Protocol):
    """A progress task factory from the CLI layer: `with progress(description, total) as advance: advance()`."""

    def __call__(self, description: str, total: int) -> ContextManager[Callable[..., None]]: ...


@dataclass(frozen=True)
class DemoConfig:
    """What `semiofed demo` runs."""

    out: Path
    sites: int = 3
    quick: bool = False
    seed: int = 0
    mode: str = MODE_DEPLOY
    rounds: int = 3
    # Each site's budget (its policy's maximum, 8) is split evenly: the local-only baseline may bring a site to
    # epsilon 4, the federated run may spend 3.9 more (the PRV accountant's error keeps it inside 8).
    local_epsilon: float = 4.0  # the site's total after its local-only baseline run
    federated_epsilon: float = 3.9  # what the coordinator asks each site to spend at most in the federated run
    # the federated run starts from a model trained on the public reference seizures (no privacy cost), not from
    # random weights: docs/benchmarks.md, "The public initial model"
    public_init: bool = True

    def phantom(self) -> Any:
        """The phantom cohort: every site holds out half its patients, so the default demo tests >= 40 seizures.

        Video time is what `site prepare` pays for (about 0.35 s per second of
        video for the pose landmarks the model reads), so the videos are short:
        the seizure plus a second or two before and after.
        """
        from semiofed.phantom.dataset import GenerateConfig

        if self.quick:
            return GenerateConfig(sites=self.sites, patients=4 * self.sites, min_patients_per_site=4, seizures_per_patient=(1, 1),
                                  seed=self.seed, duration_s=(10.0, 10.5), lead_s=(1.5, 2.5), tail_s=(1.5, 2.5), size=(256, 192))
        return GenerateConfig(sites=self.sites, patients=28 * self.sites, min_patients_per_site=28, seizures_per_patient=(1, 1),
                              seed=self.seed, duration_s=(10.0, 12.0), lead_s=(1.0, 2.0), tail_s=(1.0, 2.0))

    def federation(self) -> FederationConfig:
        """The federated run: the default model and schedule (docs/privacy.md's rule), half of each site's patients held out.

        Two patient folds, no validation fold: the test half is never seen in training, the other half trains; the
        ~20 noisy steps of the rule are `rounds x local_epochs` at q = 1.
        """
        return FederationConfig(rounds=self.rounds, local_epochs=-(-20 // self.rounds), folds=2, validation=False,
                                seed=self.seed, min_sites=2, site_epsilon=self.federated_epsilon, round_timeout=600.0)

    def reference(self) -> Any:
        """The public reference cohort: phantom seizures of other patients (another seed), for the decision threshold."""
        from semiofed.phantom.dataset import GenerateConfig

        quick = self.phantom()
        return GenerateConfig(sites=1, patients=8 if self.quick else 24, min_patients_per_site=1, seizures_per_patient=(1, 1),
                              seed=self.seed + REFERENCE_SEED_OFFSET, duration_s=quick.duration_s, lead_s=quick.lead_s,
                              tail_s=quick.tail_s, size=quick.size)

    def deidentify(self) -> Any:
        """What `site prepare` computes: the pose the model reads (and the STCNN only if the run's streams use it)."""
        from semiofed.client.deid.pipeline import DeidentifyConfig
        from semiofed.common.constants import STREAM_POSE, STREAM_STCNN, needs_stcnn

        return DeidentifyConfig(streams=(STREAM_POSE,) + ((STREAM_STCNN,) if needs_stcnn(self.federation().streams) else ()))


def generate_videos(config: DemoConfig, progress: Progress, *, reference: bool = False) -> list[Path]:
    """Phantom seizure videos for each hospital (own camera set-up and case mix); returns one manifest per site."""
    from semiofed.phantom.dataset import check_output_dir, plan_dataset, render_videos, write_manifests

    videos = config.out / ("reference" if reference else "videos")
    check_output_dir(videos, force=True)
    _, planned = plan_dataset(config.reference() if reference else config.phantom())
    with progress("rendering phantom seizure videos", len(planned)) as advance:
        render_videos(planned, videos, workers=min(len(planned), os.cpu_count() or 1), on_rendered=advance)
    return sorted(write_manifests(videos, planned))


def prepare_sites(config: DemoConfig, manifests: list[Path], progress: Progress) -> list[dict[str, Any]]:
    """`site init` and `site prepare` at each hospital."""
    from semiofed.client.deid.prepare import prepare_site
    from semiofed.client.site import init_site, open_site

    results = []
    for manifest in manifests:
        name = manifest.parent.name
        site_dir = config.out / "sites" / name
        site = open_site(site_dir) if (site_dir / "site.json").exists() else init_site(site_dir, name)
        rows = sum(1 for _ in manifest.open()) - 1
        with progress(f"{name}: de-identifying videos", rows) as advance:
            outcomes = prepare_site(site, manifest, config=config.deidentify(), on_outcome=lambda _o: advance())
        rates = [o.detection_rate.get("pose", 0.0) for o in outcomes if o.detection_rate]
        results.append({"site": name, "site_dir": str(site_dir), "records": sum(o.status in ("done", "skipped") for o in outcomes),
                        "failed": sum(o.status == "failed" for o in outcomes),
                        "pose_detection": float(np.mean(rates)) if rates else 0.0})
    return results


def reference_seizures(config: DemoConfig, fed: FederationConfig, progress: Progress) -> list[Any]:
    """The public reference seizures, rendered and run through `site prepare` like any hospital's."""
    from semiofed.client.deid.prepare import prepare_site
    from semiofed.client.site import init_site, open_site
    from semiofed.client.training.local import group_patients, load_site_records

    (manifest,) = generate_videos(config, progress, reference=True)
    site_dir = config.out / "reference-site"
    site = open_site(site_dir) if (site_dir / "site.json").exists() else init_site(site_dir, "reference",
                                                                                    public_reference=True)
    rows = sum(1 for _ in manifest.open()) - 1
    with progress("public reference: de-identifying videos", rows) as advance:
        prepare_site(site, manifest, config=config.deidentify(), on_outcome=lambda _o: advance())
    patients = group_patients(load_site_records(site, fed.labels), fed.labels, fed.streams)
    return [s for p in patients for s in p.seizures]


def calibrate(model: Any, reference: list[Any], n_segments: int) -> dict[str, Any]:
    """Set the model's decision threshold and scale on the public reference seizures (no privacy cost)."""
    from semiofed.common.learning.calibration import calibrate_on_reference
    from semiofed.common.learning.trainer import predict_logits

    logits = predict_logits(model, reference, n_segments=n_segments)
    return calibrate_on_reference(model, logits, np.array([s.label for s in reference]))


def public_initial_model(config: DemoConfig, fed: FederationConfig, reference: list[Any]) -> tuple[Any, Path]:
    """The classifier trained on the public reference seizures alone (no DP, no site data), saved as the run's
    initial model; returns it (uncalibrated) and its checkpoint."""
    from semiofed.common.learning.classifier import classifier_config
    from semiofed.common.learning.public_model import public_patients, save_public_model, train_public_model

    model = train_public_model(public_patients(reference), classifier_config(fed), lr=fed.lr, optimizer=fed.optimizer,
                               batch_patients=fed.batch_patients, seed=fed.seed)
    return model, save_public_model(config.out / "public-model", model, len(reference))


def local_baselines(site_dirs: list[Path], fed: FederationConfig, epsilon: float, progress: Progress) -> dict[str, Any]:
    """Each site alone, with DP: the baseline a hospital can run without the federation."""
    from semiofed.client.training.local import LocalTrainingOptions, train_site
    from semiofed.client.site import open_site

    spec = fed.model_spec
    out = {}
    with progress("local-only DP training at each site", len(site_dirs)) as advance:
        for site_dir in site_dirs:
            site = open_site(site_dir)
            options = LocalTrainingOptions(epochs=fed.rounds * fed.local_epochs, batch_patients=fed.batch_patients, lr=fed.lr,
                                           optimizer=fed.optimizer,
                                           epsilon=epsilon, folds=fed.folds, test_fold=fed.test_fold,
                                           validation=fed.validation, seed=fed.seed, labels=spec.labels,
                                           streams=spec.streams, temporal=spec.temporal, hidden=spec.hidden,
                                           embed_dim=spec.embed_dim, n_segments=spec.n_segments, descriptors=spec.descriptors,
                                           run_name="demo-local-only")
            result = train_site(site_dir, options)
            out[site.site_id] = {"metrics": _scalars(result.test_metrics), "epsilon_spent": result.epsilon_spent,
                                 "checkpoint": str(result.checkpoint)}
            advance()
    return out


def pool_local_only(local: dict[str, Any], tasks: list[Any], reference: list[Any], n_segments: int) -> dict[str, Any]:
    """Every site's local-only model, calibrated on the public reference, on its own held-out patients, pooled."""
    from semiofed.common.learning.checkpoint import load_checkpoint
    from semiofed.common.learning.metrics import classification_report, softmax
    from semiofed.common.learning.trainer import predict_logits

    ys, ps = [], []
    for task in tasks:
        entry = local[task.site.site_id]
        checkpoint = load_checkpoint(Path(entry["checkpoint"]))
        entry["calibration"] = calibrate(checkpoint.model, reference, n_segments)
        seizures = [s for p in task.test for s in p.seizures]
        ps.append(softmax(predict_logits(checkpoint.model, seizures, n_segments=n_segments)))
        ys.append(np.array([s.label for s in seizures]))
        entry["metrics_uncalibrated"], entry["metrics"] = entry["metrics"], _scalars(classification_report(ys[-1], ps[-1]))
    y, p = np.concatenate(ys), np.concatenate(ps)
    return {"pooled": _with_intervals(classification_report(y, p), y, p), "y": y.tolist(), "p": p.tolist()}


def _with_intervals(metrics: dict[str, Any], y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from semiofed.common.learning.metrics import bootstrap_intervals

    return {**_scalars(metrics), "ci95": bootstrap_intervals(y, p)}


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}


def site_tasks(site_dirs: list[Path], fed: FederationConfig) -> list[Any]:
    """Each site's split for this run (the same patients the federation and the baselines hold out)."""
    from semiofed.client.training.federated_round import SiteSettings, SiteTask

    return [SiteTask(SiteSettings(d), fed) for d in site_dirs]


def evaluate_everywhere(model: Any, temperature: float, tasks: list[Any], n_segments: int) -> dict[str, Any]:
    """Per-site and pooled metrics of one model on every site's held-out test patients."""
    from semiofed.common.learning.trainer import predict_logits
    from semiofed.common.learning.metrics import classification_report, softmax

    per_site, ys, ps = {}, [], []
    for task in tasks:
        seizures = [s for p in task.test for s in p.seizures]
        probs = softmax(predict_logits(model, seizures, n_segments=n_segments), temperature)
        y = np.array([s.label for s in seizures])
        per_site[task.site.site_id] = _scalars(classification_report(y, probs))
        ys.append(y)
        ps.append(probs)
    y, p = np.concatenate(ys), np.concatenate(ps)
    return {"sites": per_site, "pooled": _with_intervals(classification_report(y, p), y, p), "y": y.tolist(), "p": p.tolist()}


def federation_gain(federated: dict[str, Any], local_pooled: dict[str, Any],
                    public_only: dict[str, Any] | None) -> dict[str, Any]:
    """What the federated model adds on the same held-out seizures: paired differences (with bootstrap intervals)
    over each site's local-only model and, when the run started from it, over the public model alone."""
    from semiofed.common.learning.metrics import paired_difference

    gain = {}
    for name, other in (("over_local_only", local_pooled), ("over_public_only", public_only)):
        if other is not None:
            if other["y"] != federated["y"]:
                raise ValueError(f"{name}: the models were not scored on the same held-out seizures")
            gain[name] = paired_difference(federated["y"], federated["p"], other["p"])
    return gain


def centralised_baseline(tasks: list[Any], fed: FederationConfig, reference: list[Any],
                         progress: Progress) -> tuple[dict[str, Any], Any]:
    """All sites' training patients pooled in one place, no DP: the non-private upper reference (never done in practice)."""
    from semiofed.common.learning.classifier import classifier_config
    from semiofed.common.learning.calibration import fit_temperature
    from semiofed.common.learning.classifier import build_classifier
    from semiofed.common.learning.trainer import TrainConfig, Trainer, predict_logits

    model = build_classifier(classifier_config(fed), seed=fed.seed)
    train = [p for t in tasks for p in t.train]
    epochs = fed.rounds * fed.local_epochs
    trainer = Trainer(model, TrainConfig(epochs=epochs, batch_patients=fed.batch_patients, lr=fed.lr,
                                         optimizer=fed.optimizer, dp=False, seed=fed.seed),
                      n_segments=fed.n_segments)
    with progress("centralised non-private baseline", epochs) as advance:
        trainer.fit(train, on_epoch=lambda _e, _s: advance())
    calibration = calibrate(model, reference, fed.n_segments)
    val = [s for t in tasks for p in t.validation for s in p.seizures]
    temperature = fit_temperature(predict_logits(model, val, n_segments=fed.n_segments),
                                  np.array([s.label for s in val])) if val else 1.0
    return evaluate_everywhere(model, temperature, tasks, fed.n_segments) | {"calibration": calibration}, model


def federate(config: DemoConfig, site_dirs: list[Path], fed: FederationConfig, on_line: Callable[[str], None],
             deployment: Any = None) -> dict[str, Any]:
    """The federated DP run with SecAgg+: a real local deployment (default; `deployment` when it was started ahead,
    see run_demo) or Flower's simulation engine. The deployment is stopped at the end either way."""
    from semiofed.common.version import semiofed_version
    from semiofed.server.run_log import read_run

    if config.mode == MODE_SIMULATION:
        from semiofed.server.federation.simulation import simulate

        sites_root = site_dirs[0].parent
        final = simulate(sites_root, replace(fed, checkpoints_dir=str((config.out / "federation").resolve()),
                                             semiofed_version=semiofed_version()), on_line=on_line)
        return read_run(final.parent)
    from semiofed.server.local_deployment import LocalDeployment

    deployment = deployment or LocalDeployment(config.out / "coordinator", site_dirs)
    try:
        return deployment.run(fed, on_line=on_line)
    finally:
        deployment.stop()


def audit_sites(site_dirs: list[Path]) -> dict[str, Any]:
    """Every site's ledger verified with the independent accountant, against the site's public key."""
    from semiofed.client.site import open_site
    from semiofed.common.privacy.keys import load_public_key
    from semiofed.common.privacy.ledger import read_entries
    from semiofed.common.audit.verify import verify_ledger

    out = {}
    for d in site_dirs:
        site = open_site(d)
        report = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key))
        entries = read_entries(site.layout.ledger_file)
        out[site.site_id] = {"verified": bool(report.ok), "problems": [f"{p.kind}: {p.detail}" for p in report.problems],
                             "entries": len(entries), "epsilon_max": site.policy.max_epsilon, "delta": site.policy.target_delta,
                             "epsilon": [{"seq": e["seq"], "time": e["time"], "kind": e["kind"], "run_id": e["run_id"],
                                          "round": e["round"], "epsilon_cumulative": e["epsilon_cumulative"]} for e in entries]}
    return out


def timeline_example(checkpoint_dir: Path, tasks: list[Any]) -> dict[str, Any] | None:
    """One held-out TCS seizure through the final model: per-snippet P(TCS) with true onset and generalisation."""
    from semiofed.client.training.local import load_site_records
    from semiofed.client.training.predict import predict_record
    from semiofed.common.learning.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_dir)
    for task in tasks:
        test_ids = {s.record_id for p in task.test for s in p.seizures}
        for record in load_site_records(task.site, checkpoint.config.labels):
            if record.record_id in test_ids and record.label == "TCS" and record.generalization_s is not None:
                prediction = predict_record(checkpoint, record)
                tcs = list(prediction.labels).index("TCS")
                return {"site": task.site.site_id, "record_id": record.record_id, "label": record.label,
                        "onset_s": record.onset_s, "generalization_s": record.generalization_s,
                        "estimated_generalisation_s": prediction.generalisation_s,
                        "times": prediction.snippet_times.tolist(), "p_tcs": prediction.snippet_probabilities[:, tcs].tolist(),
                        "probabilities": prediction.probabilities}
    return None


def clinician_view(checkpoint_dir: Path, tasks: list[Any], out: Path | None = None) -> dict[str, Any]:
    """Every held-out seizure through `semiofed predict`'s assessment with the final model: the decision (a class,
    or review for an unusual seizure), the region the decision rests on, the generalisation moment against truth;
    with `out`, the page `semiofed predict` writes, for the first held-out generalised seizure."""
    from semiofed.client.training.local import load_site_records
    from semiofed.client.training.predict import assess_record
    from semiofed.client.training.predict_page import write_assessment_page
    from semiofed.common.learning.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_dir)
    rows, page = [], None
    for task in tasks:
        test_ids = {s.record_id for p in task.test for s in p.seizures}
        for record in load_site_records(task.site, checkpoint.config.labels):
            if record.record_id not in test_ids:
                continue
            a = assess_record(checkpoint, record)
            if out is not None and page is None and record.label == "TCS" and a.evolution.generalisation_s is not None:
                page = write_assessment_page(a, out / f"assessment-{record.record_id}.html",
                                             title=f"held-out seizure {record.record_id} ({task.site.site_id})",
                                             model=f"final federated model ({checkpoint_dir.name})")
            rows.append({"site": task.site.site_id, "record_id": record.record_id, "label": record.label,
                         "decision": a.decision, "confidence": round(a.prediction.confidence, 3),
                         "top_region": a.explanation.top_region, "unusual_score": a.unusual.get("score"),
                         "side": None if a.explanation.side is None else a.explanation.side.side,
                         "side_truth": record.side,
                         "generalization_s": record.generalization_s,
                         "estimated_generalization_s": None if a.evolution.generalisation_s is None
                         else round(a.evolution.generalisation_s, 2)})
    return {"seizures": len(rows), "review": sum(r["decision"] == "review" for r in rows), "rows": rows,
            "page": None if page is None else page.name}


@contextlib.contextmanager
def _stopped_on_error(deployment: Any) -> Iterator[None]:
    """Stop a deployment started ahead when a stage before the run fails (federate stops it otherwise)."""
    try:
        yield
    except BaseException:
        if deployment is not None:
            deployment.stop()
        raise


def run_demo(config: DemoConfig, progress: Progress, on_line: Callable[[str], None] = lambda _l: None) -> dict[str, Any]:
    """The whole demo; returns the report data (also written to report.json and report.html)."""
    from semiofed.common.learning.checkpoint import CHECKPOINT_OWN_KEYS, load_checkpoint, save_checkpoint
    from semiofed.server.report import write_reports

    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.monotonic() - t0, 1)
        return time.monotonic()

    t = time.monotonic()
    manifests = generate_videos(config, progress)
    t = lap("render", t)
    prepared = prepare_sites(config, manifests, progress)
    t = lap("prepare", t)
    site_dirs = [Path(p["site_dir"]) for p in prepared]
    fed = config.federation()
    tasks = site_tasks(site_dirs, fed)
    deployment = None
    if config.mode == MODE_DEPLOY:  # the sites come up while the reference seizures are prepared, as a hospital's
        from semiofed.server.local_deployment import LocalDeployment  # site services are up before a run

        deployment = LocalDeployment(config.out / "coordinator", site_dirs).start_in_background()
    with _stopped_on_error(deployment):
        reference = reference_seizures(config, fed, progress)
        t = lap("reference", t)
        local = local_baselines(site_dirs, fed, config.local_epsilon, progress)
        local_pooled = pool_local_only(local, tasks, reference, fed.n_segments)
        t = lap("local_baseline", t)
        central, central_model = centralised_baseline(tasks, fed, reference, progress)
        public_only = None
        if config.public_init:
            public_model, public_path = public_initial_model(config, fed, reference)
            fed = replace(fed, resume_from=str(public_path))  # the run's initial weights: saved before calibration
            public_calibration = calibrate(public_model, reference, fed.n_segments)
            public_only = evaluate_everywhere(public_model, 1.0, tasks, fed.n_segments) | {
                "calibration": public_calibration, "checkpoint": str(public_path)}
        from semiofed.client.training.calibrate import reference_records
        from semiofed.common.learning.unusual import fit_unusual_on_records

        unusual = fit_unusual_on_records(reference_records(config.out / "reference-site", fed.labels)).to_json()
        # the non-private upper reference, kept beside the federated model for bench/bench_explain.py's comparison
        save_checkpoint(config.out / "centralised", central_model, {"temperature": 1.0, "calibration": central["calibration"],
                                                                    "unusual": unusual, "trained": "centralised, no DP"})
        t = lap("centralised_baseline", t)
    run = federate(config, site_dirs, fed, on_line, deployment)
    t = lap("federation", t)
    if deployment is not None and deployment.start_s is not None:  # overlapped with the stages above, not in them
        timings["federation_start_overlapped"] = round(deployment.start_s, 1)
    if run.get("status") != "finished":
        from semiofed.common.errors import SemiofedError

        raise SemiofedError(f"the federated run failed: {run.get('error')}", "read report.json's run section and the SuperLink log")
    final = load_checkpoint(Path(run["final_checkpoint"]))
    calibration = calibrate(final.model, reference, fed.n_segments)
    calibrated = save_checkpoint(Path(run["final_checkpoint"]).parent / "final-calibrated", final.model,
                                 {k: v for k, v in final.meta.items() if k not in CHECKPOINT_OWN_KEYS}
                                 | {"temperature": 1.0, "calibration": calibration, "unusual": unusual})
    federated = evaluate_everywhere(final.model, 1.0, tasks, fed.n_segments) | {"calibration": calibration}
    audit = audit_sites(site_dirs)
    timeline = timeline_example(calibrated, tasks)
    clinician = clinician_view(calibrated, tasks, config.out)
    lap("evaluation_and_audit", t)
    report = {
        "config": {**asdict(config), "out": str(config.out), "federation": fed.to_run_config()},
        "federation_mode": ("real local deployment: SuperLink with TLS, site-key authentication, SecAgg+, one SuperNode "
                            "process per site on 127.0.0.1") if config.mode == MODE_DEPLOY else
                           "Flower simulation engine (Ray), SecAgg+, one virtual SuperNode per site",
        "sites": prepared, "local_only": local, "local_only_pooled": local_pooled, "centralised": central,
        "public_only": public_only, "federated": federated,
        "federation_gain": federation_gain(federated, local_pooled, public_only), "run": run,
        "audit": audit, "timeline": timeline, "clinician": clinician, "final_checkpoint": str(calibrated),
        "reference": {"seizures": len(reference), "seed": config.seed + REFERENCE_SEED_OFFSET,
                      "what": "public phantom seizures run through site prepare; they set each model's decision "
                              "threshold and scale (post-processing, no privacy cost)"},
        "timings_s": timings, "seconds": round(time.monotonic() - started, 1),
    }
    write_reports(config.out, report)
    return report
