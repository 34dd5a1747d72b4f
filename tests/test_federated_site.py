"""A site's side of a federated round (SiteTask), on a real site directory with synthetic records.

What a hospital relies on: its noise is chosen once per run and kept; a round
it cannot afford, or a coordinator asking for less noise than its policy, is
refused before any training step and leaves its ledger and accountant
untouched; every release is one signed ledger entry an auditor verifies; only
whitelisted metrics come back; FedProx keeps local weights near the global ones.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import evaluateres_to_recorddict, fitres_to_recorddict

from dp_synthetic import populate
from semiofed.client.training import federated_round as federated_training
from semiofed.client.federation.client_app import egress_spec
from semiofed.client.federation.egress import check_reply
from semiofed.client.training.site_split import FOLDS_FILE
from semiofed.client.training.federated_round import (
    RUNS_DIR,
    RoundDeclined,
    SiteSettings,
    SiteTask,
)
from semiofed.common.learning.classifier import classifier_config
from semiofed.common.learning.weights import get_weights, to_wire
from semiofed.common.learning.weights import update_sha256 as weights_sha256
from semiofed.client.site import init_site, tighten_policy
from semiofed.common.learning.classifier import build_classifier
from semiofed.common.learning.trainer import Trainer, TrainConfig
from semiofed.common.federation.run_config import (
    EVAL_METRICS,
    FIT_METRICS,
    KEY_FEATURE_SHA,
    KEY_LEDGER_HEAD,
    KEY_SITE_ID,
    KEY_VERSION,
    STRATEGY_FEDAVG,
    STRATEGY_FEDPROX,
    FederationConfig,
)
from semiofed.common.privacy.keys import load_public_key
from semiofed.common.privacy.ledger import KIND_FEDERATED, read_entries
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.privacy.accountant import ACCOUNTANT_FILE, _epsilon_of
from semiofed.common.version import semiofed_version

SIGMA = 1.0  # what the coordinator asks for where the test is not about choosing the noise
SMALL = FederationConfig(rounds=2, local_epochs=1, batch_patients=3, temporal="attn", hidden=8, embed_dim=8, n_segments=4,
                         stcnn_dim=16, semiofed_version=semiofed_version())
ASKED = replace(SMALL, noise_multiplier=SIGMA)


def make_site(root: Path, name: str, *, max_epsilon: float = 100.0, records_seed: int = 0):
    """A site with 10 synthetic patients: 6 train (q = 3/6, 2 steps a round), 2 validation, 2 test."""
    site = init_site(root / name, name, PrivacyPolicy(max_epsilon=max_epsilon))
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12, seed=records_seed)
    return site


def global_weights(config: FederationConfig = SMALL) -> list[np.ndarray]:
    """The coordinator's round-1 model (server_app.initial_weights)."""
    return get_weights(build_classifier(classifier_config(config), seed=config.seed))


def snapshot(site) -> dict[str, bytes]:
    """Every byte of the site's privacy state: ledger, accountant, per-run noise choices (not the site's fold
    placement, which SiteTask writes when it first sees a patient: it spends nothing)."""
    files = [site.layout.ledger_file, *sorted(p for p in site.layout.privacy_dir.rglob("*")
                                              if p.is_file() and p.name != FOLDS_FILE)]
    return {str(p.relative_to(site.layout.root)): p.read_bytes() for p in files}


class NoTraining(Trainer):
    """Stands in for the Trainer where a test says no step may happen."""

    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError("a training step was about to run")


# --- the noise of a run -------------------------------------------------------
def test_noise_is_chosen_once_per_run_and_kept(tmp_path):
    site = make_site(tmp_path, "hospital-a", max_epsilon=8.0)
    settings = SiteSettings(site.layout.root)
    sigma = SiteTask(settings, SMALL).noise_for_run("run-1")  # the site chooses: 2 rounds within its 8.0
    assert sigma >= site.policy.min_noise_multiplier
    stored = json.loads((site.layout.privacy_dir / RUNS_DIR / "run-1.json").read_text(encoding="utf-8"))
    assert stored["noise_multiplier"] == sigma and stored["rounds"] == 2

    # a restarted SuperNode (a new SiteTask) keeps the run's noise, even if the run config it now gets says otherwise
    longer = replace(SMALL, rounds=20)
    assert SiteTask(settings, longer).noise_for_run("run-1") == sigma
    # a new run with that config gets its own choice: more rounds within the same budget need more noise
    assert SiteTask(settings, longer).noise_for_run("run-2") > sigma
    assert read_entries(site.layout.ledger_file) == []  # choosing noise releases nothing


def test_noise_below_the_sites_minimum_is_refused(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    before = snapshot(site)
    task = SiteTask(SiteSettings(site.layout.root), replace(SMALL, noise_multiplier=0.5))
    assert site.policy.min_noise_multiplier == 0.8

    with pytest.raises(RoundDeclined, match="the site's policy wins") as raised:
        task.noise_for_run("run-1")
    assert "0.5" in str(raised.value) and "0.8" in str(raised.value)
    with mock.patch.object(federated_training, "Trainer", NoTraining), pytest.raises(RoundDeclined, match="policy wins"):
        task.fit(global_weights(), run_id="run-1", round=1)
    status = task.budget_status("run-1")
    assert status["accepts"] == 0 and "the site's policy wins" in status["decline_reason"]
    assert snapshot(site) == before


# --- a round the site cannot afford ---------------------------------------------
def test_round_beyond_the_budget_is_declined_before_any_step(tmp_path):
    site = make_site(tmp_path, "hospital-a", max_epsilon=8.0)
    settings = SiteSettings(site.layout.root)
    task = SiteTask(settings, ASKED)
    one_round = _epsilon_of([(SIGMA, task.sample_rate, task.steps_per_round)], site.policy.target_delta)
    site = tighten_policy(site, PrivacyPolicy(max_epsilon=1.2 * one_round))  # enough for one round, not two

    task = SiteTask(settings, ASKED)
    weights, _, _ = task.fit(global_weights(), run_id="run-1", round=1)
    assert task.budget_status("run-1")["accepts"] == 0
    before = snapshot(site)
    assert (site.layout.privacy_dir / ACCOUNTANT_FILE).is_file() and len(read_entries(site.layout.ledger_file)) == 1

    with mock.patch.object(federated_training, "Trainer", NoTraining):
        with pytest.raises(RoundDeclined, match="declines round 2") as raised:
            SiteTask(settings, ASKED).fit(weights, run_id="run-1", round=2)
    assert "budget is unchanged" in str(raised.value)
    assert snapshot(site) == before


# --- a release --------------------------------------------------------------------
def test_fit_appends_one_ledger_entry_that_verifies(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    task = SiteTask(SiteSettings(site.layout.root), ASKED)
    start = global_weights()

    weights, n, metrics = task.fit(start, run_id="run-1", round=1)

    entries = read_entries(site.layout.ledger_file)
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["kind"], entry["run_id"], entry["round"], entry["site_id"]) == (KIND_FEDERATED, "run-1", 1, "hospital-a")
    assert entry["update_sha256"] == weights_sha256(weights)  # the entry names exactly the update that leaves
    assert entry["noise_multiplier"] == SIGMA and entry["steps"] == task.steps_per_round
    assert entry["epsilon_cumulative"] == pytest.approx(metrics["epsilon_spent"])
    head = json.loads(task.head())
    assert head["seq"] == 0 and head["entry_hash"] == entry["entry_hash"]
    verification = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key), head=head)
    assert verification.ok, [str(p) for p in verification.problems]

    assert n == len(task.train)  # FedAvg weight: training patients, the privacy unit
    assert set(metrics) == set(FIT_METRICS)
    assert [w.shape for w in weights] == [w.shape for w in start] and all(w.dtype == np.float32 for w in weights)
    assert any(not np.array_equal(a, b) for a, b in zip(weights, start))
    # and the reply SiteClient builds from it passes the site's egress policy
    identity = {KEY_SITE_ID: "hospital-a", KEY_VERSION: semiofed_version(), KEY_LEDGER_HEAD: task.head(),
                KEY_FEATURE_SHA: str(task.extractor["sha256"])}
    reply = fitres_to_recorddict(FitRes(Status(Code.OK, ""), ndarrays_to_parameters(to_wire(weights)), n, {**metrics, **identity}), False)
    assert check_reply("train", reply, egress_spec(None, config=ASKED, settings=SiteSettings(site.layout.root))) == []


def test_evaluate_releases_only_the_charged_vector(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    task = SiteTask(SiteSettings(site.layout.root), ASKED)

    metrics = task.evaluate(global_weights(), run_id="run-1", round=2)

    assert set(metrics) <= set(EVAL_METRICS) and metrics["evaluation_release"] == 1.0
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    (entry,) = read_entries(site.layout.ledger_file)  # one signed release, charged like a training step
    assert entry["kind"] == "evaluation" and entry["run_id"] == "run-1" and entry["round"] == 2
    assert (entry["noise_multiplier"], entry["sample_rate"], entry["steps"]) == (5.0, 1.0, 1)
    assert verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key)).ok
    reply = evaluateres_to_recorddict(EvaluateRes(Status(Code.OK, ""), 0.0, 0, {**metrics, KEY_SITE_ID: "hospital-a"}))
    assert check_reply("evaluate", reply, egress_spec(None, config=SMALL, settings=SiteSettings(site.layout.root))) == []


# --- FedProx ---------------------------------------------------------------------
def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b))))


def test_fedprox_keeps_the_local_update_near_the_global_model(tmp_path):
    """Two sites with the same records and seed, one round each: FedProx's update is the shorter one.

    Under DP every step's noise is fresh, so mu is large enough (and lr high enough) that the pull is far
    beyond the noise: measured distances 0.33 (mu 100) against 0.95 (mu 0), spread +-0.01.
    """
    fast = replace(ASKED, lr=1e-2)
    start = global_weights(fast)
    moved = {}
    for strategy, mu in ((STRATEGY_FEDAVG, 0.0), (STRATEGY_FEDPROX, 100.0)):
        site = make_site(tmp_path, strategy, records_seed=0)
        anchors = []

        class Spy(Trainer):
            def __init__(self, model, config, *, n_segments, proximal=None):
                anchors.append(proximal)
                super().__init__(model, config, n_segments=n_segments, proximal=proximal)

        with mock.patch.object(federated_training, "Trainer", Spy):
            weights, _, _ = SiteTask(SiteSettings(site.layout.root), replace(fast, strategy=strategy, proximal_mu=mu or 0.01)) \
                .fit(start, run_id="run-1", round=1)
        moved[strategy] = _distance(weights, start)
        if strategy == STRATEGY_FEDAVG:
            assert anchors == [None]  # plain FedAvg has no proximal term, whatever proximal_mu says
        else:
            (params, used_mu), = anchors
            assert used_mu == mu
            model = build_classifier(classifier_config(fast))
            trainable = [name for name, p in model.named_parameters()]
            state = dict(zip(model.state_dict(), start))
            assert all(torch.equal(p, torch.from_numpy(state[name])) for p, name in zip(params, trainable))
    assert moved[STRATEGY_FEDPROX] < 0.6 * moved[STRATEGY_FEDAVG], moved


def test_proximal_term_pulls_toward_the_anchor_without_noise(tmp_path):
    """The Trainer's term mu/2 |w - w_global|^2, deterministic (no DP): more mu, less drift."""
    site = make_site(tmp_path, "hospital-a")
    patients = SiteTask(SiteSettings(site.layout.root), SMALL).train

    def drift(mu: float) -> float:
        torch.manual_seed(0)
        model = build_classifier(classifier_config(SMALL), seed=0)
        anchors = [p.detach().clone() for p in model.parameters()]
        config = TrainConfig(epochs=2, batch_patients=3, lr=1e-2, dp=False, seed=3)
        Trainer(model, config, n_segments=SMALL.n_segments, proximal=(anchors, mu) if mu else None).fit(patients)
        return float(sum(((p.detach() - a) ** 2).sum() for p, a in zip(model.parameters(), anchors)).sqrt())

    none, some, strong = drift(0.0), drift(1.0), drift(10.0)
    assert drift(0.0) == none  # same seed, same run
    assert strong < some < none


def test_sites_run_epsilon_caps_a_run_with_coordinator_chosen_noise(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    settings = SiteSettings(site.layout.root, run_epsilon=1.0)  # `semiofed site join --run-epsilon 1`
    task = SiteTask(settings, ASKED)
    one_round = _epsilon_of([(SIGMA, task.sample_rate, task.steps_per_round)], site.policy.target_delta)
    assert one_round > 1.0  # the coordinator's noise would spend more than the site allows per run
    task.noise_for_run("run-1")  # the run's noise is recorded (not spent) at its first contact
    before = snapshot(site)
    with mock.patch.object(federated_training, "Trainer", NoTraining):
        with pytest.raises(RoundDeclined):
            task.fit(global_weights(), run_id="run-1", round=1)
    assert snapshot(site) == before


def test_many_runs_share_one_run_epsilon_allowance_per_window(tmp_path):
    """`--run-epsilon` is per window, not per run id: a coordinator that starts run after run gets no new allowance."""
    import time as _time

    site = make_site(tmp_path, "hospital-a")
    probe = SiteTask(SiteSettings(site.layout.root), ASKED)
    one_round = _epsilon_of([(SIGMA, probe.sample_rate, probe.steps_per_round)], site.policy.target_delta)
    cap = 1.1 * one_round  # room for one round, not two (two compose to about 1.4 times one)
    settings = SiteSettings(site.layout.root, run_epsilon=cap)
    first = SiteTask(settings, replace(ASKED, evaluate_every=0))
    first.fit(global_weights(), run_id="run-1", round=1)
    before = snapshot(site)
    # a second run, then a third: each would fit a per-run cap, together they do not
    for run_id in ("run-2", "run-3"):
        with pytest.raises(RoundDeclined, match="window"):
            SiteTask(settings, ASKED).fit(global_weights(), run_id=run_id, round=1)
    assert [e["run_id"] for e in read_entries(site.layout.ledger_file)] == ["run-1"]
    assert {k: v for k, v in snapshot(site).items() if RUNS_DIR not in k} == {k: v for k, v in before.items() if RUNS_DIR not in k}
    # once the window has moved past the first run's release, the allowance is there again
    short = SiteSettings(site.layout.root, run_epsilon=cap, run_window_days=1.0 / 86400)
    _time.sleep(2.1)
    SiteTask(short, ASKED).fit(global_weights(), run_id="run-4", round=1)
    assert [e["run_id"] for e in read_entries(site.layout.ledger_file)] == ["run-1", "run-4"]
