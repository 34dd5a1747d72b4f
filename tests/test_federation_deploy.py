"""A real deployment on 127.0.0.1: SuperLink with TLS, site authentication and a database, three SuperNodes, SecAgg+.

The processes are started once for the module and stopped in the fixture's
teardown, also when a test fails. Site "site-2" can afford exactly one
round in its life; the others have ample budget. The tests run in file
order: the kill test (slow suite) needs site-2's one round.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dp_synthetic import populate
from semiofed.client.federation import supernode
from semiofed.client.training.federated_round import SiteSettings, SiteTask
from semiofed.client.site import init_site
from semiofed.common.learning.checkpoint import load_checkpoint
from semiofed.common.federation.run_config import SITE_NODES_FILE, FederationConfig
from semiofed.common.privacy.keys import load_public_key
from semiofed.common.privacy.ledger import read_entries
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.privacy.accountant import _epsilon_of
from semiofed.common.federation.processes import free_port, is_running, read_pid, stop
from semiofed.common.version import semiofed_version
from semiofed.server.coordinator import Coordinator

SIGMA = 1.0
SMALL = dict(local_epochs=1, batch_patients=3, temporal="attn", hidden=8, embed_dim=8, n_segments=4, stcnn_dim=16,
             noise_multiplier=SIGMA, min_sites=2, round_timeout=90.0)


def _make_site(root: Path, name: str, max_epsilon: float, seed: int):
    site = init_site(root / name, name, PrivacyPolicy(max_epsilon=max_epsilon))
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12, seed=seed)
    return site


def _one_round_epsilon(site, config: FederationConfig) -> float:
    task = SiteTask(SiteSettings(site.layout.root), config)
    return _epsilon_of([(SIGMA, task.sample_rate, task.steps_per_round)], site.policy.target_delta)


class Federation:
    """The coordinator and the sites of the module, and the extra processes a test starts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator = Coordinator(root / "coordinator")
        self.coordinator.init(port=free_port())
        self.config = FederationConfig(**SMALL)
        self.sites = [_make_site(root / "sites", "site-0", 50.0, 0), _make_site(root / "sites", "site-1", 50.0, 1)]
        budget_one_round = _one_round_epsilon(self.sites[0], self.config) * 1.2
        self.sites.append(_make_site(root / "sites", "site-2", budget_one_round, 2))
        for site in self.sites:
            self.coordinator.enroll(site.layout.public_key, name=site.site_id)
        self.extra_pids: list[int] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.state().port}"

    def join(self, site) -> int:
        return supernode.join(site.layout.root, superlink=self.address, ca=self.coordinator.tls.ca_certificate,
                              clientapp_port=free_port(), background=True)

    def run(self, rounds: int, **overrides) -> dict:
        config = FederationConfig(**{**SMALL, "rounds": rounds, **overrides})
        return self.coordinator.run(config, timeout=900)

    def ledger(self, site) -> list[dict]:
        return read_entries(site.layout.ledger_file)

    def close(self) -> None:
        supernode.leave_all([site.layout.root for site in self.sites])
        for pid in self.extra_pids:
            stop(pid)
        self.coordinator.stop()


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"))
    try:
        fed.coordinator.start()
        for site in fed.sites:
            fed.join(site)
        yield fed
    finally:
        fed.close()
        pids = [read_pid(s.layout.root / supernode.PID_FILE) for s in fed.sites] + [fed.coordinator.pid(), *fed.extra_pids]
        assert not any(is_running(p) for p in pids), "a process of the test outlived its teardown"
        # each worker imported the ClientApp, torch and the accountants before its first task, not during it
        for site in fed.sites:
            log = (site.layout.root / "logs" / "supernode.log").read_text(errors="replace")
            assert "could not import the training code" not in log, site.site_id


def _sites_in(run: dict, round_: int, key: str) -> set[str]:
    return set(next(r for r in run["rounds"] if r["round"] == round_)[key])


def _check_ledgers(fed: Federation, run: dict) -> None:
    for site in fed.sites:
        report = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key))
        assert report.ok, (site.site_id, [p.detail for p in report.problems])
        trained = [r["round"] for r in run["rounds"] if site.site_id in r["fit"]]
        entries = [e for e in fed.ledger(site) if e["run_id"] == run["run_id"]]
        # one signed entry per round the site trained; a declined round leaves the ledger as it was
        assert [e["round"] for e in entries if e["kind"] == "federated"] == trained, site.site_id
        # and one per evaluation it released (the last round only, by default), charged like the training
        last = max(r["round"] for r in run["rounds"])
        evaluated = [last] if site.site_id in next(r for r in run["rounds"] if r["round"] == last)["evaluate"] else []
        assert [e["round"] for e in entries if e["kind"] == "evaluation"] == evaluated, site.site_id


@pytest.mark.slow
def test_run_survives_a_site_killed_mid_round(federation):
    fed = federation
    victim = fed.sites[0]
    runs_dir = victim.layout.privacy_dir / "federated-runs"
    before = set(runs_dir.glob("*.json")) if runs_dir.is_dir() else set()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(fed.run(rounds=1)))
    thread.start()
    try:
        deadline = time.monotonic() + 300
        # the victim has started its round once it chose the run's noise
        while time.monotonic() < deadline and not (set(runs_dir.glob("*.json")) - before if runs_dir.is_dir() else set()):
            time.sleep(0.5)
        assert supernode.leave(victim.layout.root), "the victim was not running"
        thread.join(timeout=900)
    finally:
        thread.join(timeout=5)
        fed.join(victim)
    assert result.get("status") == "finished", result.get("error")
    assert "site-0" not in _sites_in(result, 1, "fit") and "site-1" in _sites_in(result, 1, "fit")


def test_tls_authenticated_run_with_a_site_out_of_budget(federation, tmp_path):
    fed = federation
    # an unenrolled site may not take part (a plaintext client: tests/test_adversaries_network.py)
    rogue = _make_site(tmp_path, "rogue", 50.0, 7)
    fed.extra_pids.append(supernode.join(rogue.layout.root, superlink=fed.address, ca=fed.coordinator.tls.ca_certificate,
                                         clientapp_port=free_port(), background=True))

    run = fed.run(rounds=2)

    assert run["status"] == "finished", run.get("error")
    all_sites = {s.site_id for s in fed.sites}
    for r in run["rounds"]:
        assert set(r["budget"]) <= all_sites, "a site that is not enrolled took part"
        # only the last round is evaluated, and only by the sites that trained it: the one out of budget is asked
        # nothing more
        assert set(r["evaluate"]) == (_sites_in(run, r["round"], "fit") if r["round"] == 2 else set())
        assert all("balanced_accuracy" in m and m["evaluation_release"] == 1.0 for m in r["evaluate"].values())
        assert all(v["ledger_head_verified"] is True for v in r["budget"].values())
    # site-2 can afford one round in its life: it trains at most once, then declines, and the run goes on
    declined = [r["round"] for r in run["rounds"] if "site-2" in r["declined"]]
    assert declined, run["rounds"]
    assert "above this site's maximum" in next(r for r in run["rounds"] if "site-2" in r["declined"])["declined"]["site-2"]
    assert all({"site-0", "site-1"} <= _sites_in(run, r["round"], "fit") for r in run["rounds"])
    _check_ledgers(fed, run)
    assert read_entries(rogue.layout.ledger_file) == [], "the unenrolled site trained"
    # the run's strategy knew which node each enrolled key signs in as (a replayed head is refused: test_strategy_trust)
    nodes = json.loads((fed.coordinator.sites_dir / SITE_NODES_FILE).read_text())
    assert nodes == {name: str(node) for name, node in fed.coordinator.state().registered.items()}
    assert set(nodes) == all_sites
    # ... because the SuperLink refused its key, not because it never tried
    assert "Failed to activate SuperNode" in (rogue.layout.root / "logs" / supernode.LOG_FILE).read_text(errors="replace")

    final = load_checkpoint(Path(run["final_checkpoint"]))
    assert final.meta["training"]["federated"] is True and final.meta["temperature"] > 0
    assert final.meta["privacy"]["secure_aggregation"] is True

    status = CliRunner().invoke(_cli(), ["coordinator", "status", "--dir", str(fed.coordinator.root), "--format", "json"])
    assert status.exit_code == 0, status.output
    # every enrolled site is online; the rogue is not enrolled and not listed
    assert json.loads(status.stdout)["sites"] == {s.site_id: "online" for s in fed.sites}
    info = CliRunner().invoke(_cli(), ["coordinator", "info", "--dir", str(fed.coordinator.root), "--format", "json"])
    assert info.exit_code == 0, info.output
    shown = json.loads(info.stdout)
    assert Path(shown["ca_certificate"]).is_file() and Path(shown["checkpoints_dir"]).is_dir() and shown["database"]


@pytest.mark.slow
def test_coordinator_restart_keeps_state_and_resumes(federation):
    fed = federation
    latest = fed.coordinator.latest_checkpoint()
    assert latest is not None
    fed.coordinator.stop()
    fed.coordinator.start()  # same database: the registered sites may reconnect without enrolling again
    # SuperNodes reconnect with a back-off; a run started at once would get only the sites back so far
    status = fed.coordinator.wait_for_sites(len(fed.sites), timeout=180)
    assert set(status.values()) == {"online"}, status
    run = fed.run(rounds=1, resume_from=str(latest))
    assert run["status"] == "finished", run.get("error")
    assert run["config"]["resume-from"] == str(latest) and run["config"]["semiofed-version"] == semiofed_version()
    _check_ledgers(fed, run)


def _cli():
    from semiofed.cli import main

    main._register()
    return main.app
