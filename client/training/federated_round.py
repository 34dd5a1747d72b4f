"""One site's part of a federated round: budget check, local DP training from the global weights, evaluation.

Knows nothing of Flower (client/federation/client_app.py decodes and encodes messages).
The site enforces its own policy: the noise is at least the site's minimum,
every round is checked against the site's lifetime budget before any step,
the accountant and the chosen noise are persisted on the site's disk (a
SuperNode restart or a new run continues them), and every release is written
to the signed ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semiofed.client.site import Site, open_site
from semiofed.client.training.federated_evaluation import count_evaluation, evaluations_so_far, gaussian_noise, release_vector
from semiofed.client.training.site_split import split_site_patients
from semiofed.client.training.local import common_extractor, group_patients, load_site_records
from semiofed.common.constants import needs_stcnn
from semiofed.common.errors import SemiofedError
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.files import make_private_dir, write_json_atomic
from semiofed.common.federation.evaluation import KEY_NOISE, KEY_RELEASE, RELEASE_CODES, to_metrics
from semiofed.common.learning.classifier import SeizureClassifier, build_classifier, classifier_config
from semiofed.common.learning.trainer import TrainConfig, Trainer
from semiofed.common.learning.weights import get_weights, set_weights
from semiofed.common.privacy.accountant import PlannedRun, PrivacyBudgetError, SiteAccountant, release_epsilon
from semiofed.common.privacy.budgeted_run import budget_lock, budgeted_run
from semiofed.common.privacy.keys import load_site_private_key
from semiofed.common.privacy.ledger import KIND_EVALUATION, KIND_FEDERATED
from semiofed.common.privacy.policy import EVALUATION_EXACT, EVALUATION_NONE, EVALUATION_NOISY
from semiofed.common.privacy.ledger_writer import ledger_head

log = logging.getLogger(__name__)

RUNS_DIR = "federated-runs"
EPS_SLACK = 0.01  # the PRV accountant's epsilon error: a run planned to the cap may land this far above it


class RoundDeclined(SemiofedError):
    """The site will not train this round (its policy or budget says no); the reason goes to the coordinator."""


@dataclass(frozen=True)
class SiteSettings:
    """Site-only settings (from the SuperNode's --node-config); never sent by the server."""

    site_dir: Path
    # the most this site spends on federated runs in any window of `run_window_days` (all its releases in that
    # window count, however many runs they belong to); 0: whatever its policy has left
    run_epsilon: float = 0.0
    run_window_days: float = 30.0
    # another placement of the site's patients in its own folds (client/training/site_split.py); site-only
    split_seed: int = 0


class SiteTask:
    """A site's records, split and budget for one federated run."""

    def __init__(self, settings: SiteSettings, config: FederationConfig) -> None:
        self.settings = settings
        self.config = config
        self.site: Site = open_site(settings.site_dir)
        records = load_site_records(self.site, config.labels)
        self.extractor = common_extractor(records)
        if needs_stcnn(config.streams):
            if self.extractor["name"] != config.stcnn or int(self.extractor["dim"]) != config.stcnn_dim:
                raise RoundDeclined(
                    f"site {self.site.site_id} has {self.extractor['name']} features ({self.extractor['dim']}-d), "
                    f"the run trains on {config.stcnn} ({config.stcnn_dim}-d)",
                    f"re-prepare the site's records with --stcnn {config.stcnn}, or run with this site's extractor",
                )
            if self.extractor["input"] != config.stcnn_input:
                raise RoundDeclined(
                    f"site {self.site.site_id}'s STCNN features saw the video as '{self.extractor['input']}', the run "
                    f"trains on '{config.stcnn_input}'",
                    f"re-prepare the site's records with `semiofed site prepare --stcnn-input {config.stcnn_input}` "
                    "(into an empty store), or train on the keypoint stream only",
                )
        patients = group_patients(records, config.labels, config.streams)
        if len(patients) < config.folds:
            # the count stays at the site (the decline text goes to the coordinator): only that it is below the folds
            log.warning("site %s has %d patients, fewer than the run's %d folds", self.site.site_id, len(patients),
                        config.folds)
            raise RoundDeclined(f"site {self.site.site_id} has fewer patients than the run's {config.folds} folds",
                                "prepare more records, or run with fewer --folds")
        # the site's own folds (site_split.py): the coordinator's seed moves no patient
        self.train, self.validation, self.test = split_site_patients(self.site, patients, config.folds, config.test_fold,
                                                                     validation=config.validation,
                                                                     split_seed=settings.split_seed)
        if config.distributed:
            # one plain SGD step of lr 1: the update is the global weights minus this site's noisy mean gradient, so
            # FedAvg's patient-weighted mean of the updates is one DP-SGD step on every site's patients together
            self.train_config = TrainConfig(epochs=1, batch_patients=config.batch_patients, lr=1.0, optimizer="sgd",
                                            dp=True, clipping_norm=self.site.policy.clipping_norm, seed=config.seed)
            self.steps_per_round = 1
        else:
            self.train_config = TrainConfig(epochs=config.local_epochs, batch_patients=config.batch_patients,
                                            lr=config.lr, optimizer=config.optimizer,
                                            dp=True, clipping_norm=self.site.policy.clipping_norm, seed=config.seed)
            self.steps_per_round = self.train_config.steps(len(self.train))
        self.sample_rate = self.train_config.sample_rate(len(self.train))

    # --- privacy ----------------------------------------------------------
    def distributed_terms(self) -> dict[str, Any] | None:
        """None for a local-DP run; for a distributed one the site's own terms (K, colluders), or RoundDeclined.

        The site takes K from its own policy, never from the coordinator, and refuses a run whose rounds could
        complete with fewer than K sites (SecAgg+'s threshold is checked again in the ClientApp)."""
        if not self.config.distributed:
            return None
        policy = self.site.policy
        if not policy.distributed_dp_sites:
            raise RoundDeclined(f"site {self.site.site_id} takes part in local-DP runs only (its policy's "
                                "distributed_dp_sites is 0)",
                                "run with --dp-mode local, or the site's privacy officer opts in at `site init`")
        if self.config.min_sites < policy.distributed_dp_sites:
            raise RoundDeclined(
                f"the run may complete a round with {self.config.min_sites} sites; site {self.site.site_id}'s "
                f"distributed DP needs every sum to hold at least {policy.distributed_dp_sites}",
                f"run with --min-sites {policy.distributed_dp_sites} or more, or --dp-mode local")
        return {"sites": policy.distributed_dp_sites, "colluders": policy.distributed_dp_colluders}

    def site_noise(self, sigma: float, terms: dict[str, Any] | None) -> tuple[float, dict[str, Any] | None]:
        """The noise this site adds for an accounted sigma, and the ledger's distributed terms (None: local DP)."""
        if terms is None:
            return sigma, None
        own = sigma / math.sqrt(self.site.policy.distributed_share)
        return own, terms | {"site_noise_multiplier": own}

    def accountant(self) -> SiteAccountant:
        """The site's lifetime accountant, read from disk each time (another process may have stepped it)."""
        return self.site.privacy.accountant()

    def _run_file(self, run_id: str) -> Path:
        return make_private_dir(self.site.layout.privacy_dir / RUNS_DIR) / f"{run_id}.json"

    def noise_for_run(self, run_id: str) -> float:
        """Sigma for this run, chosen once (at its first round) so all its rounds fit the site's run budget; persisted."""
        path = self._run_file(run_id)
        if path.is_file():
            return float(json.loads(path.read_text(encoding="utf-8"))["noise_multiplier"])
        policy = self.site.policy
        requested = self.config.noise_multiplier
        if requested and requested < policy.min_noise_multiplier:
            raise RoundDeclined(
                f"the coordinator asked for noise multiplier {requested:g}, below site {self.site.site_id}'s minimum "
                f"{policy.min_noise_multiplier:g}; the site's policy wins",
                "run with --noise-multiplier 0 (each site chooses) or at least every site's minimum",
            )
        accountant = self.accountant()
        spent = accountant.epsilon_spent()
        caps = [policy.max_epsilon - spent]
        if self.config.site_epsilon > 0:  # the coordinator's request: this run only
            caps.append(self.config.site_epsilon)
        if self.settings.run_epsilon > 0:  # the site's own cap: everything spent in the current window
            caps.append(self.settings.run_epsilon - (spent - self.window_base()))
        allowance = min(caps)
        # the run's noisy evaluations are set aside first: training gets what is left (a conservative sum)
        reserve = self.evaluations_planned() * self.evaluation_epsilon()
        allowance -= reserve
        if requested:
            sigma = requested
        else:
            if allowance <= 1e-6:
                raise RoundDeclined(f"site {self.site.site_id} has spent epsilon {spent:.3f} of its {policy.max_epsilon:g}",
                                    "nothing is left; the site's privacy officer may not raise it")
            total_steps = self.config.rounds * self.steps_per_round
            sigma = accountant.noise_for(target_epsilon=spent + allowance, sample_rate=self.sample_rate, steps=total_steps)
        write_json_atomic(path, {"run_id": run_id, "noise_multiplier": sigma, "sample_rate": self.sample_rate,
                                 "steps_per_round": self.steps_per_round, "rounds": self.config.rounds,
                                 "epsilon_before": spent, "epsilon_allowance": allowance,
                                 "epsilon_evaluation_reserve": reserve,
                                 "chosen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        log.info("site %s: noise multiplier %.3f for run %s (%d rounds x %d steps, allowance %.3f)",
                 self.site.site_id, sigma, run_id, self.config.rounds, self.steps_per_round, allowance)
        return sigma

    def evaluations_planned(self) -> int:
        """The noisy evaluations this run may make at this site (its schedule, capped by the site's policy)."""
        policy = self.site.policy
        if policy.evaluation_release != EVALUATION_NOISY:
            return 0
        return min(policy.max_evaluations_per_run, self.config.evaluation_rounds)

    def evaluation_epsilon(self) -> float:
        """The epsilon of one noisy evaluation on its own (Gaussian mechanism, sensitivity 1, one release)."""
        return release_epsilon(self.evaluation_plan(), self.site.policy.target_delta)

    def evaluation_plan(self) -> PlannedRun:
        return PlannedRun(self.site.policy.evaluation_noise_multiplier, 1.0, 1)

    def window_base(self) -> float:
        """The site's cumulative epsilon just before the current `run_window_days` window (0 if it began earlier)."""
        from datetime import datetime, timedelta, timezone

        from semiofed.common.privacy.ledger import read_entries_cached

        if not self.site.layout.ledger_file.exists():
            return 0.0
        start = datetime.now(timezone.utc) - timedelta(days=self.settings.run_window_days)
        base = 0.0
        for entry in read_entries_cached(self.site.layout.ledger_file):
            if datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")) < start:
                base = float(entry["epsilon_cumulative"])
        return base

    def check_round(self, accountant: SiteAccountant, planned: PlannedRun, run_id: str) -> float:
        """The projected lifetime epsilon after this release; RoundDeclined/PrivacyBudgetError if the site's limits say no.

        Two caps besides the lifetime budget: the coordinator's `site-epsilon` for this run (from where the run
        started), and the site's `--run-epsilon` for its current window (from where the window started, so that
        many runs share one allowance)."""
        projected = accountant.check(planned)
        if self.config.site_epsilon > 0:
            before = float(json.loads(self._run_file(run_id).read_text(encoding="utf-8"))["epsilon_before"])
            if projected - before > self.config.site_epsilon + EPS_SLACK:
                raise RoundDeclined(
                    f"this round would bring the run's spending at site {self.site.site_id} to epsilon "
                    f"{projected - before:.3f}, above the {self.config.site_epsilon:g} the run asked for",
                    "the run goes on with the other sites; this site's budget is unchanged",
                )
        if self.settings.run_epsilon > 0:
            base = self.window_base()
            if projected - base > self.settings.run_epsilon + EPS_SLACK:
                raise RoundDeclined(
                    f"this round would bring site {self.site.site_id}'s federated spending in its "
                    f"{self.settings.run_window_days:g}-day window to epsilon {projected - base:.3f}, above the "
                    f"{self.settings.run_epsilon:g} the site allows; the site's policy wins",
                    "the run goes on with the other sites; this site's budget is unchanged",
                )
        return projected

    def budget_status(self, run_id: str) -> dict[str, Any]:
        """Whether the site can afford the next round of `run_id`, with its figures (nothing is spent)."""
        accountant = self.accountant()
        status: dict[str, Any] = accountant.summary()
        try:
            self.distributed_terms()
            sigma = self.noise_for_run(run_id)
            status["epsilon_projected"] = self.check_round(accountant, PlannedRun(sigma, self.sample_rate, self.steps_per_round), run_id)
            status["accepts"], status["decline_reason"] = 1, ""
        except (RoundDeclined, PrivacyBudgetError) as exc:
            status["epsilon_projected"] = status["epsilon_spent"]
            status["accepts"], status["decline_reason"] = 0, _reason(exc)
        return status

    def head(self) -> str:
        """The site's signed ledger head as compact JSON."""
        key = load_site_private_key(self.site.layout.private_key)
        head = ledger_head(self.site.layout.ledger_file, key, self.site.site_id, policy=self.site.policy)
        return json.dumps(head, separators=(",", ":"), sort_keys=True)

    # --- training and evaluation -----------------------------------------
    def build_model(self, weights: Sequence[np.ndarray]) -> SeizureClassifier:
        """The run's classifier with the given global weights."""
        model = build_classifier(classifier_config(self.config), seed=self.config.seed)
        set_weights(model, weights)
        return model

    def fit(self, weights: Sequence[np.ndarray], *, run_id: str, round: int) -> tuple[list[np.ndarray], int, dict[str, float]]:
        """Train one round with DP-SGD from `weights`; the round is refused (RoundDeclined) before any step if unaffordable."""
        started = time.monotonic()
        terms = self.distributed_terms()  # a distributed run this site refuses is refused before its noise is chosen
        sigma = self.noise_for_run(run_id)
        own_sigma, distributed = self.site_noise(sigma, terms)
        planned = PlannedRun(sigma, self.sample_rate, self.steps_per_round)

        def check(accountant: SiteAccountant) -> None:  # under the budget lock, on the state as re-read
            try:
                self.check_round(accountant, planned, run_id)
            except PrivacyBudgetError as exc:
                raise RoundDeclined(f"site {self.site.site_id} declines round {round}: {exc.what}",
                                    "the run goes on with the other sites; this site's budget is unchanged") from None

        check(self.accountant())  # refuse before building or training anything (checked again under the lock)
        self.site.privacy.check_appendable()
        model = self.build_model(weights)
        global_params = [p.detach().clone() for p in model.parameters()]
        seed = int.from_bytes(hashlib.sha256(f"{self.config.seed}/{run_id}/{round}".encode()).digest()[:4], "little")
        config = TrainConfig(**{**self.train_config.to_dict(), "noise_multiplier": own_sigma, "seed": seed})
        mu = self.config.proximal_mu if self.config.strategy == "fedprox" else 0.0
        trainer = Trainer(model, config, n_segments=self.config.n_segments, proximal=(global_params, mu) if mu > 0 else None)
        last: dict[str, float] = {}
        try:
            with budgeted_run(self.site.privacy, planned, kind=KIND_FEDERATED, run_id=run_id, round=round,
                              note=f"federated {run_id} round {round}", check=check, distributed=distributed) as run:
                # a distributed step added this site's share sigma_site; the sum that leaves carries sigma, which is
                # what the accountant charges (the steps are still counted one by one against the reservation)
                on_step = run.step if distributed is None else (
                    lambda *, noise_multiplier, sample_rate: run.step(noise_multiplier=sigma, sample_rate=sample_rate))
                trainer.fit(self.train, on_step=on_step, steps=self.steps_per_round,
                            on_epoch=lambda _e, stats: last.update(stats))
                new_weights = get_weights(model)
                run.release(new_weights)
        finally:
            trainer.close()
        entry = run.entry or {}
        spent = float(entry["epsilon_cumulative"])
        metrics = {
            "epsilon_round": float(entry["epsilon"]),
            "epsilon_spent": spent, "epsilon_max": self.site.policy.max_epsilon, "delta": self.site.policy.target_delta,
            "noise_multiplier": sigma, "site_noise_multiplier": own_sigma, "sample_rate": self.sample_rate, "steps": float(self.steps_per_round),
            "train_patients": float(len(self.train)), "seconds": time.monotonic() - started,
        }
        # the share of clipped per-patient gradients is a statistic of private gradients: it stays in the site's log
        log.info("site %s round %d: clipped fraction %.3f", self.site.site_id, round, float(last.get("clipped_fraction", 0.0)))
        # FedAvg weights by patients, the privacy unit (not seizures: a patient's count is private)
        return new_weights, len(self.train), metrics

    def evaluate(self, weights: Sequence[np.ndarray], *, run_id: str, round: int = 0) -> dict[str, float]:
        """The release of one evaluation of `weights` on this site's held-out patients (see federated_evaluation.py),
        or RoundDeclined when the site's policy says no: nothing is released then and nothing is spent."""
        policy, site_id = self.site.policy, self.site.site_id
        if policy.evaluation_release == EVALUATION_NONE:
            raise RoundDeclined(f"site {site_id}'s policy releases no evaluation", "the run's figures come from other sites")
        if len(self.test) < policy.min_evaluation_patients:
            # how many it holds stays here: the coordinator learns only that the fold is below the site's minimum
            log.warning("site %s: %d test patients in fold %d, below the policy's %d", site_id, len(self.test),
                        self.config.test_fold, policy.min_evaluation_patients)
            raise RoundDeclined(f"site {site_id} holds out fewer test patients in this fold than its policy needs "
                                "for an evaluation", "run with fewer --folds")
        run_file = self._run_file(run_id)

        def within_cap() -> None:
            if evaluations_so_far(run_file) >= policy.max_evaluations_per_run:
                raise RoundDeclined(f"site {site_id} has made the {policy.max_evaluations_per_run} evaluation(s) of "
                                    f"run {run_id} its policy allows", "evaluate less often (--evaluate-every)")

        within_cap()
        vector = release_vector(self.build_model(weights), self.validation, self.test,
                                n_segments=self.config.n_segments, n_classes=len(self.config.labels))
        if policy.evaluation_release == EVALUATION_EXACT:  # public by the site's policy: counted, not charged
            with budget_lock(self.site.layout.privacy_dir):
                within_cap()
                count_evaluation(run_file, run_id)
            return {**to_metrics(vector, len(self.config.labels)), KEY_RELEASE: RELEASE_CODES[EVALUATION_EXACT], KEY_NOISE: 0.0}

        self.noise_for_run(run_id)  # the run's cap is measured from where the run started
        planned = self.evaluation_plan()

        def check(accountant: SiteAccountant) -> None:  # under the budget lock
            within_cap()
            try:
                self.check_round(accountant, planned, run_id)
            except PrivacyBudgetError as exc:
                raise RoundDeclined(f"site {site_id} declines to evaluate round {round}: {exc.what}",
                                    "the run goes on with the other sites; this site's budget is unchanged") from None

        self.site.privacy.check_appendable()
        with budgeted_run(self.site.privacy, planned, kind=KIND_EVALUATION, run_id=run_id, round=round,
                          note=f"evaluation {run_id} round {round}", check=check) as run:
            released = vector + gaussian_noise(vector.size, planned.noise_multiplier)
            run.step(noise_multiplier=planned.noise_multiplier, sample_rate=planned.sample_rate)
            run.release([released])
            count_evaluation(run_file, run_id)
        return {**to_metrics(released, len(self.config.labels)), KEY_RELEASE: RELEASE_CODES[EVALUATION_NOISY],
                KEY_NOISE: planned.noise_multiplier}


def _reason(exc: SemiofedError) -> str:
    return str(exc)[:900]


__all__ = ["SiteTask", "SiteSettings", "RoundDeclined"]
