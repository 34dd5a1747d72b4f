"""`semiofed coordinator simulate` end to end: three site stores in Flower's simulation engine, with and without SecAgg+.

The first test trains the default classifier shape (`FederationConfig()`), so the
synthetic records carry its STCNN width and segment count; the second a small one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dp_synthetic import populate
from semiofed.cli import main
from semiofed.client.federation.egress import EGRESS_LOG
from semiofed.client.site import init_site
from semiofed.common.learning.checkpoint import load_checkpoint
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.privacy.keys import load_public_key
from semiofed.common.privacy.ledger import KIND_FEDERATED, read_entries
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.server.run_log import RUN_FILE

SITES = ("hospital-a", "hospital-b", "hospital-c")
DEFAULT = FederationConfig()


@pytest.mark.slow
def test_simulate_command_trains_a_checkpoint_and_leaves_verified_ledgers(tmp_path):
    sites_dir = tmp_path / "sites"
    sites = []
    for seed, name in enumerate(SITES):
        site = init_site(sites_dir / name, name, PrivacyPolicy(max_epsilon=8.0))
        populate(site.layout.records_dir, n_patients=10, dim=DEFAULT.stcnn_dim, n_snippets=DEFAULT.n_segments, seed=seed)
        sites.append(site)
    out = tmp_path / "federation"

    main._register()
    result = CliRunner().invoke(main.app, ["coordinator", "simulate", "--sites-dir", str(sites_dir), "--rounds", "1",
                                           "--local-epochs", "1", "--out", str(out), "--temporal", "attn", "--format", "json"])
    assert result.exit_code == 0, (result.output, result.exception)
    run = json.loads(result.stdout[result.stdout.index("{\n"):])  # Ray may print its workers' lines before the JSON

    assert run["status"] == "finished" and len(run["rounds"]) == 1
    run_dir = out / f"run-{run['run_id']}"
    assert json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")) == run  # what it printed is what it kept
    round_ = run["rounds"][0]
    assert round_["declined"] == {} and round_["failures"] == [] and round_["skipped"] is None

    # the final global model loads (weights hash checked) with the run's shape
    checkpoint = load_checkpoint(Path(run["final_checkpoint"]))
    assert checkpoint.path == run_dir / "final"
    assert (checkpoint.config.temporal, checkpoint.config.hidden, checkpoint.config.stcnn_dim) == ("attn", DEFAULT.hidden, DEFAULT.stcnn_dim)
    assert checkpoint.meta["training"]["federated"] is True and checkpoint.meta["training"]["run_id"] == run["run_id"]
    assert sorted(checkpoint.meta["privacy"]["sites"]) == list(SITES)

    # every site released one noisy evaluation of the global model on its own held-out patients; the run log
    # holds what the coordinator read from each release and from their sum
    assert sorted(round_["evaluate"]) == list(SITES)
    for name, metrics in round_["evaluate"].items():
        assert {"accuracy", "balanced_accuracy", "temperature", "patients", "evaluation_release"} <= set(metrics), name
        assert metrics["evaluation_release"] == 1.0
    assert round_["aggregate"]["sites"] == 3 and round_["evaluation_declined"] == {}

    # every site released exactly one update, recorded in a ledger an auditor verifies with the site's public key
    assert sorted(round_["fit"]) == list(SITES)
    for site in sites:
        entries = read_entries(site.layout.ledger_file)
        assert [(e["kind"], e["run_id"], e["round"]) for e in entries] == [(KIND_FEDERATED, run["run_id"], 1),
                                                                             ("evaluation", run["run_id"], 1)]
        assert entries[0]["epsilon_cumulative"] == pytest.approx(round_["fit"][site.site_id]["epsilon_spent"])
        assert round_["fit"][site.site_id]["ledger_seq"] == 0
        verification = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key))
        assert verification.ok, (site.site_id, [str(p) for p in verification.problems])
        assert not (site.layout.root / EGRESS_LOG).exists()  # the egress policy blocked nothing


def test_a_run_without_secure_aggregation_trains_with_plain_fedprox(tmp_path):
    sites_dir = tmp_path / "sites"
    for seed, name in enumerate(SITES):
        site = init_site(sites_dir / name, name, PrivacyPolicy(max_epsilon=8.0))
        populate(site.layout.records_dir, n_patients=6, dim=DEFAULT.stcnn_dim, n_snippets=8, seed=seed)
    out = tmp_path / "federation"
    main._register()
    result = CliRunner().invoke(main.app, ["coordinator", "simulate", "--sites-dir", str(sites_dir), "--rounds", "1",
                                           "--local-epochs", "1", "--out", str(out), "--temporal", "attn", "--hidden", "8",
                                           "--segments", "4", "--folds", "3", "--batch-patients", "2",
                                           "--no-secure-aggregation", "--strategy", "fedprox", "--format", "json"])
    assert result.exit_code == 0, (result.output, result.exception)
    run = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert run["status"] == "finished" and run["rounds"][0]["failures"] == []
    assert sorted(run["rounds"][0]["fit"]) == list(SITES)
    assert run["config"]["secure-aggregation"] is False and run["config"]["strategy"] == "fedprox"
    assert load_checkpoint(Path(run["final_checkpoint"])).config.hidden == 8


def test_a_distributed_dp_run_sums_each_round_under_secagg_and_every_site_ledgers_its_share(tmp_path):
    sites_dir = tmp_path / "sites"
    sites = []
    for seed, name in enumerate(SITES):
        policy = PrivacyPolicy(max_epsilon=8.0, distributed_dp_sites=3, distributed_dp_colluders=1)
        site = init_site(sites_dir / name, name, policy)
        populate(site.layout.records_dir, n_patients=6, dim=DEFAULT.stcnn_dim, n_snippets=8, seed=seed)
        sites.append(site)
    out = tmp_path / "federation"
    main._register()
    result = CliRunner().invoke(main.app, ["coordinator", "simulate", "--sites-dir", str(sites_dir), "--rounds", "2",
                                           "--min-sites", "3", "--segments", "4", "--folds", "3",
                                           "--dp-mode", "distributed", "--strategy", "fedadam", "--out", str(out),
                                           "--format", "json"])
    assert result.exit_code == 0, (result.output, result.exception)
    run = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert run["status"] == "finished" and run["config"]["dp-mode"] == "distributed"
    for round_ in run["rounds"]:
        assert round_["failures"] == [] and sorted(round_["fit"]) == list(SITES)
    for site in sites:
        entries = [e for e in read_entries(site.layout.ledger_file) if e["kind"] == KIND_FEDERATED]
        assert [(e["round"], e["steps"]) for e in entries] == [(1, 1), (2, 1)]
        # and one charged evaluation of the final model (the last round only, by default)
        assert [e["round"] for e in read_entries(site.layout.ledger_file) if e["kind"] == "evaluation"] == [2]
        for e in entries:  # each site added sigma / sqrt(3 - 1); the SecAgg+ sum of three carries sigma
            assert e["distributed"]["site_noise_multiplier"] == pytest.approx(e["noise_multiplier"] / 2 ** 0.5)
        verification = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key))
        assert verification.ok, (site.site_id, [str(p) for p in verification.problems])
        assert not (site.layout.root / EGRESS_LOG).exists()
