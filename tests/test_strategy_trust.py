"""The coordinator's strategy checks what sites say of themselves: a site must show a signed ledger head that
verifies against its enrolled key to train, only sites that trained are evaluated, and a reply is booked to the
site its node enrolled as, not to the site id the reply claims."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, GetPropertiesRes, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy

from semiofed.client.site import init_site
from semiofed.common.federation.run_config import KEY_ACCEPTS, KEY_LEDGER_HEAD, KEY_SITE_ID, FederationConfig
from semiofed.common.privacy.keys import load_site_private_key
from semiofed.common.privacy.ledger_writer import ledger_head
from semiofed.server.federation.strategy import SiteAwareStrategy, build_inner_strategy
from semiofed.server.run_log import RunLog


class FakeSite(ClientProxy):
    """A node that answers the budget query with `answer` (a real site's signed head, or a forged one)."""

    def __init__(self, cid: str, answer: dict[str, Any]) -> None:
        super().__init__(cid)
        self.answer = answer

    def get_properties(self, ins, timeout, group_id):  # noqa: ANN001
        return GetPropertiesRes(Status(Code.OK, ""), dict(self.answer))

    def get_parameters(self, ins, timeout, group_id):  # noqa: ANN001
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # noqa: ANN001
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # noqa: ANN001
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # noqa: ANN001
        raise NotImplementedError


class Manager:
    def __init__(self, proxies: list[ClientProxy]) -> None:
        self.proxies = {p.cid: p for p in proxies}

    def wait_for(self, num_clients: int, timeout: int) -> bool:
        return True

    def all(self) -> dict[str, ClientProxy]:
        return dict(self.proxies)


def _head(site) -> str:
    key = load_site_private_key(site.layout.private_key)
    return json.dumps(ledger_head(site.layout.ledger_file, key, site.site_id, policy=site.policy), separators=(",", ":"))


@pytest.fixture()
def federation(tmp_path: Path):
    keys = tmp_path / "site-keys"
    keys.mkdir()
    sites = {name: init_site(tmp_path / name, name) for name in ("hospital_a", "hospital_b", "hospital_c")}
    for name, site in sites.items():  # enrolled: the coordinator holds each site's public key
        shutil.copy(site.layout.public_key, keys / f"{name}.pub")
    config = FederationConfig(min_sites=1, site_keys_dir=str(keys), secure_aggregation=False, evaluate_every=1)
    strategy = SiteAwareStrategy(build_inner_strategy(config, ndarrays_to_parameters([np.zeros(2, np.float32)])),
                                 config, RunLog(tmp_path / "run", run_id="r1", config={}), run_id="r1",
                                 save_checkpoint=lambda *a: "")
    return strategy, sites


def test_a_site_without_a_verified_ledger_head_neither_trains_nor_is_evaluated(federation):
    strategy, sites = federation
    honest = FakeSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    headless = FakeSite("2", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_b"})  # omits its head to skip the check
    # a node claiming to be hospital_c with hospital_a's (validly signed) head
    impostor = FakeSite("3", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_c", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    declined = FakeSite("4", {KEY_ACCEPTS: 0, KEY_SITE_ID: "hospital_c", KEY_LEDGER_HEAD: _head(sites["hospital_c"])})
    manager = Manager([honest, headless, impostor, declined])
    chosen = strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)
    assert [proxy.cid for proxy, _ in chosen] == ["1"]
    reasons = strategy.run_log.data["rounds"][-1]["declined"]
    assert "sent no signed ledger head" in reasons["hospital_b"]
    # only the site that trained is evaluated: not the headless, the impostor or the one out of budget
    asked = strategy.configure_evaluate(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)
    assert [proxy.cid for proxy, _ in asked] == ["1"]


def test_a_reply_is_booked_to_the_site_its_node_enrolled_as(federation):
    strategy, sites = federation
    node = FakeSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    manager = Manager([node])
    strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)
    reply = EvaluateRes(Status(Code.OK, ""), 0.0, 0, {KEY_SITE_ID: "hospital_b", "cm_0_0": 1.0, "cm_1_1": 1.0})
    strategy.aggregate_evaluate(1, [(node, reply)], [])
    assert set(strategy.run_log.data["rounds"][-1]["evaluate"]) == {"hospital_a"}  # not hospital_b, as it claimed


def test_when_no_round_could_run_no_site_is_evaluated(federation):
    strategy, sites = federation
    manager = Manager([FakeSite("1", {KEY_ACCEPTS: 0, KEY_SITE_ID: "hospital_a",
                                      KEY_LEDGER_HEAD: _head(sites["hospital_a"])})])
    assert strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager) == []
    assert strategy.configure_evaluate(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager) == []


def test_only_the_rounds_the_run_evaluates_ask_the_sites(tmp_path, federation):
    _, sites = federation
    config = FederationConfig(min_sites=1, rounds=3, site_keys_dir=federation[0].config.site_keys_dir,
                              secure_aggregation=False)  # evaluate-every 0: the last round only
    strategy = SiteAwareStrategy(build_inner_strategy(config, ndarrays_to_parameters([np.zeros(2, np.float32)])),
                                 config, RunLog(tmp_path / "run-2", run_id="r2", config={}), run_id="r2",
                                 save_checkpoint=lambda *a: "")
    manager = Manager([FakeSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})])
    asked = {}
    for round_ in (1, 2, 3):
        strategy.configure_fit(round_, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)
        asked[round_] = [p.cid for p, _ in strategy.configure_evaluate(round_, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)]
    assert asked == {1: [], 2: [], 3: ["1"]}
