"""Distributed DP: each site adds sigma / sqrt(K - colluders), SecAgg+'s sum of at least K sites carries sigma.

What has to hold, and what each test tries to break:
- a site adds only its share of the noise, takes one DP step a round, and its ledger entry says so (mode, K,
  colluders, its own noise); the auditor recomputes epsilon at the accounted sigma and, beside it, what the site
  would have spent had its update been seen alone;
- a site that has not opted in, or a run whose rounds could complete with fewer than the site's K, is declined
  before any step, and nothing is spent;
- a site's update leaves only masked by SecAgg+ with a reconstruction threshold of at least K: a coordinator that
  sends a plain train message, or a lower threshold, gets nothing;
- a ledger entry whose per-site noise does not add up to the accounted sigma is flagged by the auditor;
- the policy can switch distributed DP off or make it stricter, never switch it on or loosen it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from dp_synthetic import populate
from semiofed.client.federation import client_app
from semiofed.client.federation.client_app import SecureAggregationRefused, secure_aggregation_mod
from semiofed.client.site import init_site, tighten_policy
from semiofed.client.training.federated_round import RoundDeclined, SiteSettings, SiteTask
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.errors import SiteError
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.learning import trainer as trainer_module
from semiofed.common.learning.classifier import build_classifier, classifier_config
from semiofed.common.learning.weights import get_weights
from semiofed.common.privacy.keys import load_public_key, load_site_private_key
from semiofed.common.privacy.ledger import OUTSIDE_POLICY, read_entries, release_fields
from semiofed.common.privacy.ledger_writer import append_entry
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.version import semiofed_version
from semiofed.server.federation.server_app import secure_fit_workflow

SIGMA = 2.0
RUN = FederationConfig(rounds=4, batch_patients=32, temporal="gru", hidden=2, n_segments=4, stcnn_dim=16, folds=3,
                       strategy="fedadam", dp_mode="distributed", min_sites=3, noise_multiplier=SIGMA,
                       semiofed_version=semiofed_version())
OPTED_IN = PrivacyPolicy(max_epsilon=100.0, distributed_dp_sites=3, distributed_dp_colluders=1)


def make_site(root: Path, name: str, policy: PrivacyPolicy = OPTED_IN, seed: int = 0):
    site = init_site(root / name, name, policy)
    populate(site.layout.records_dir, n_patients=9, dim=16, n_snippets=8, seed=seed)
    return site


def privacy_bytes(site) -> dict[str, bytes]:
    files = [site.layout.ledger_file, *sorted(p for p in site.layout.privacy_dir.rglob("*") if p.is_file())]
    return {str(p): p.read_bytes() for p in files}


def test_a_site_adds_its_share_of_the_noise_in_one_step_and_its_ledger_says_so(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    task = SiteTask(SiteSettings(site.layout.root), RUN)
    weights = get_weights(build_classifier(classifier_config(RUN), seed=0))
    seen = []
    real = trainer_module.clip_and_noise

    def spy(per_patient, **kwargs):
        seen.append(kwargs)
        return real(per_patient, **kwargs)

    with mock.patch.object(trainer_module, "clip_and_noise", spy):
        update, n, metrics = task.fit(weights, run_id="run-d", round=1)

    share = SIGMA / math.sqrt(3 - 1)
    assert len(seen) == 1 and seen[0]["noise_multiplier"] == pytest.approx(share)  # one step, the site's share
    assert seen[0]["expected_batch_size"] == pytest.approx(len(task.train))  # q = 1 at this size
    assert metrics["noise_multiplier"] == SIGMA and metrics["site_noise_multiplier"] == pytest.approx(share)
    assert metrics["steps"] == 1 and n == len(task.train)
    assert any(not np.allclose(a, b) for a, b in zip(update, weights))

    [entry] = read_entries(site.layout.ledger_file)
    assert entry["noise_multiplier"] == SIGMA and entry["steps"] == 1
    assert entry["distributed"] == {"sites": 3, "colluders": 1, "site_noise_multiplier": pytest.approx(share)}
    verification = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key))
    assert verification.ok, [str(p) for p in verification.problems]
    [row] = verification.entries
    assert row.dp_mode == "distributed" and row.site_noise_multiplier == pytest.approx(share)
    # what holds against the coordinator (the sum) vs what would hold had this update been seen alone
    assert row.epsilon_cumulative_recomputed == pytest.approx(entry["epsilon_cumulative"], rel=0.02)
    assert row.epsilon_cumulative_without_secure_aggregation > 1.3 * row.epsilon_cumulative_recomputed


def test_the_patient_weighted_mean_of_the_sites_updates_is_one_dp_sgd_step_on_their_union(tmp_path):
    sites = [make_site(tmp_path, f"hospital-{c}", seed=i) for i, c in enumerate("abc")]
    run = replace(RUN, hidden=12)  # ~1,000 noise coordinates: the std below is estimated within ~2%
    tasks = [SiteTask(SiteSettings(s.layout.root), run) for s in sites]
    weights = get_weights(build_classifier(classifier_config(run), seed=0))
    noiseless = []
    real = trainer_module.clip_and_noise

    def without_noise(per_patient, **kwargs):  # the same step with the noise switched off, to compare
        noiseless.append(real(per_patient, **{**kwargs, "noise_multiplier": 1e-12})[0])
        return real(per_patient, **kwargs)

    with mock.patch.object(trainer_module, "clip_and_noise", without_noise):
        results = [t.fit(weights, run_id="run-sum", round=1) for t in tasks]
    total = sum(n for _, n, _ in results)
    mean = [sum(u[i].astype(np.float64) * n for u, n, _ in results) / total for i in range(len(weights))]
    # FedAvg's mean = global - (sum of clipped gradients + sum of the sites' noises) / all training patients
    noise = np.concatenate([(w - m).ravel() - sum(g[i].numpy().ravel() * n for g, (_, n, _) in zip(noiseless, results)) / total
                            for i, (w, m) in enumerate(zip(weights, mean))]) * total
    # three shares of sigma / sqrt(2) in the sum: std sigma * sqrt(3/2) (C = 1), at least the accounted sigma
    assert noise.size > 900 and np.std(noise) == pytest.approx(SIGMA * math.sqrt(3 / 2), rel=0.1)


def test_a_site_that_has_not_opted_in_declines_before_any_step(tmp_path):
    site = make_site(tmp_path, "hospital-a", PrivacyPolicy(max_epsilon=100.0))
    task = SiteTask(SiteSettings(site.layout.root), RUN)
    before = privacy_bytes(site)
    assert task.budget_status("run-x")["accepts"] == 0
    with pytest.raises(RoundDeclined, match="local-DP runs only"):
        task.fit(get_weights(build_classifier(classifier_config(RUN), seed=0)), run_id="run-x", round=1)
    assert privacy_bytes(site) == before


def test_a_run_that_could_complete_with_fewer_sites_than_the_sites_k_is_declined(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    loose = replace(RUN, min_sites=2)  # the coordinator would settle for a sum of two
    task = SiteTask(SiteSettings(site.layout.root), loose)
    before = privacy_bytes(site)
    status = task.budget_status("run-y")
    assert status["accepts"] == 0 and "--min-sites 3" in status["decline_reason"]
    with pytest.raises(RoundDeclined, match="at least 3"):
        task.fit(get_weights(build_classifier(classifier_config(loose), seed=0)), run_id="run-y", round=1)
    assert privacy_bytes(site) == before


def _train_message(configs: dict | None):
    content = RecordDict()
    if configs is not None:
        content[RECORD_KEY_CONFIGS] = ConfigRecord(configs)
    metadata = Metadata(run_id=7, message_id="m-1", src_node_id=1, dst_node_id=11, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=600.0, message_type="train")
    return make_message(metadata=metadata, content=content)


def _context(site, run: FederationConfig) -> Context:
    return Context(run_id=7, node_id=11, node_config={"site-dir": str(site.layout.root)}, state=RecordDict(),
                   run_config=run.to_run_config())


def test_the_client_app_sends_a_distributed_update_only_under_secagg_with_a_threshold_of_at_least_k(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    context = _context(site, RUN)
    answered = []

    def call_next(msg, ctx):
        answered.append(msg)
        return msg

    with pytest.raises(SecureAggregationRefused, match="only masked by SecAgg"):
        secure_aggregation_mod(_train_message(None), context, call_next)
    low = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2}
    with pytest.raises(SecureAggregationRefused, match="threshold is 2"):
        secure_aggregation_mod(_train_message(low), context, call_next)
    assert answered == []
    with mock.patch.object(client_app, "secaggplus_mod", lambda msg, ctx, nxt: "secagg"), \
            mock.patch.object(client_app, "narrow_masked_vector", lambda reply: reply):  # a stand-in reply
        assert secure_aggregation_mod(_train_message({**low, Key.THRESHOLD: 3}), context, call_next) == "secagg"
    # a local-DP run is unchanged: plain train messages pass (its updates carry the full noise)
    local = replace(RUN, dp_mode="local", strategy="fedavg")
    assert secure_aggregation_mod(_train_message(None), _context(site, local), call_next) is answered[-1]


def test_the_server_asks_secagg_for_a_threshold_of_min_sites_in_a_distributed_run():
    assert secure_fit_workflow(RUN).reconstruction_threshold == 3
    assert secure_fit_workflow(replace(RUN, dp_mode="local", strategy="fedavg")).reconstruction_threshold == 0.5


def test_the_auditor_flags_a_distributed_entry_whose_noise_does_not_add_up(tmp_path):
    site = make_site(tmp_path, "hospital-a")
    key = load_site_private_key(site.layout.private_key)
    fields = release_fields(site_id=site.site_id, run_id="run-z", round=1, kind="federated", update_sha256="0" * 64,
                            noise_multiplier=SIGMA, sample_rate=1.0, steps=1, clipping_norm=1.0, epsilon=1.0,
                            epsilon_cumulative=1.0, policy=site.policy,
                            # a site that added sigma / 2 but claims the sum still carries sigma with 2 honest sites
                            distributed={"sites": 3, "colluders": 1, "site_noise_multiplier": SIGMA / 2})
    append_entry(site.layout.ledger_file, fields, key)
    verification = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key))
    [short] = [p for p in verification.problems if p.kind == OUTSIDE_POLICY]
    assert "sums to sigma 1.414" in str(short) and verification.entries[0].problems


def test_the_policy_may_switch_distributed_dp_off_or_tighten_it_never_on_or_looser(tmp_path):
    with pytest.raises(SiteError, match="trust assumption"):
        PrivacyPolicy(distributed_dp_sites=2, distributed_dp_colluders=2)
    with pytest.raises(SiteError, match="trust assumption"):
        PrivacyPolicy(distributed_dp_sites=1, distributed_dp_colluders=0)
    local = init_site(tmp_path / "local", "local", PrivacyPolicy())
    with pytest.raises(SiteError, match="only be lowered"):
        tighten_policy(local, replace(local.policy, distributed_dp_sites=3))
    opted = init_site(tmp_path / "opted", "opted", OPTED_IN)
    with pytest.raises(SiteError, match="only be lowered"):
        tighten_policy(opted, replace(opted.policy, distributed_dp_sites=2))
    with pytest.raises(SiteError, match="only be lowered"):
        tighten_policy(opted, replace(opted.policy, distributed_dp_colluders=0))
    assert tighten_policy(opted, replace(opted.policy, distributed_dp_sites=5, distributed_dp_colluders=2)).policy.distributed_share == 3
    assert tighten_policy(opted, replace(opted.policy, distributed_dp_sites=0)).policy.distributed_share == 0
    assert json.loads(opted.layout.policy_file.read_text())["distributed_dp_sites"] == 0
