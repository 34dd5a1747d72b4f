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

    def num_available(self) -> int:
        return len(self.proxies)


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


def test_a_site_whose_id_has_no_enrolled_key_does_not_train_even_with_a_valid_head(tmp_path, federation):
    """A real site with its own key pair and a correctly signed head, under an id the coordinator never enrolled."""
    strategy, sites = federation
    stranger = init_site(tmp_path / "hospital_x", "hospital_x")  # its key is not in the coordinator's site-keys
    honest = FakeSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    rogue = FakeSite("2", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_x", KEY_LEDGER_HEAD: _head(stranger)})
    manager = Manager([honest, rogue])
    chosen = strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)
    assert [proxy.cid for proxy, _ in chosen] == ["1"]
    round_ = strategy.run_log.data["rounds"][-1]
    assert "has no enrolled key here" in round_["declined"]["hospital_x"]
    assert round_["budget"]["hospital_x"]["ledger_head_verified"] is False
    asked = strategy.configure_evaluate(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)
    assert [proxy.cid for proxy, _ in asked] == ["1"]


def test_a_node_that_replays_another_sites_valid_head_does_not_train(tmp_path):
    """An enrolled node (its own Fleet key) answers as hospital_a with a head hospital_a signed (leaked, or replayed):
    the coordinator knows which node hospital_a's key was registered as, and this is not it."""
    from semiofed.common.federation.run_config import SITE_NODES_FILE

    keys = tmp_path / "site-keys"
    keys.mkdir()
    sites = {name: init_site(tmp_path / name, name) for name in ("hospital_a", "hospital_b")}
    for name, site in sites.items():
        shutil.copy(site.layout.public_key, keys / f"{name}.pub")
    (keys / SITE_NODES_FILE).write_text(json.dumps({"hospital_a": "101", "hospital_b": "202"}))
    config = FederationConfig(min_sites=1, site_keys_dir=str(keys), secure_aggregation=False, evaluate_every=1)
    strategy = SiteAwareStrategy(build_inner_strategy(config, ndarrays_to_parameters([np.zeros(2, np.float32)])),
                                 config, RunLog(tmp_path / "run", run_id="r1", config={}), run_id="r1",
                                 save_checkpoint=lambda *a: "")
    head_a = _head(sites["hospital_a"])
    honest = FakeSite("101", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: head_a})
    replay = FakeSite("202", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: head_a})  # hospital_b's node
    chosen = strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), Manager([replay, honest]))
    assert [proxy.cid for proxy, _ in chosen] == ["101"]
    assert strategy.site_of["202"] == "node-202" and strategy.admitted["202"] is False  # never booked as hospital_a
    round_ = strategy.run_log.data["rounds"][-1]
    assert "whose key is another node's" in round_["declined"]["node-202"]
    assert "hospital_a" not in round_["declined"] and round_["budget"]["hospital_a"]["ledger_head_verified"] is True


def test_a_reply_is_booked_to_the_site_its_node_enrolled_as(federation):
    strategy, sites = federation
    node = FakeSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    manager = Manager([node])
    strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), manager)
    reply = EvaluateRes(Status(Code.OK, ""), 0.0, 0, {KEY_SITE_ID: "hospital_b", "cm_0_0": 1.0, "cm_1_1": 1.0})
    strategy.aggregate_evaluate(1, [(node, reply)], [])
    assert set(strategy.run_log.data["rounds"][-1]["evaluate"]) == {"hospital_a"}  # not hospital_b, as it claimed


def test_a_fit_reply_claiming_another_site_is_booked_to_the_site_its_node_answered_as(federation):
    """A node admitted as hospital_a sends its update saying it is hospital_b (to spend or hide under b's name)."""
    strategy, sites = federation
    node = FakeSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    manager = Manager([node])
    params = ndarrays_to_parameters([np.zeros(2, np.float32)])
    assert len(strategy.configure_fit(1, params, manager)) == 1
    reply = _fit_reply(sites["hospital_a"])
    reply.metrics[KEY_SITE_ID] = "hospital_b"
    strategy.aggregate_fit(1, [(node, reply)], [])
    round_ = strategy.run_log.data["rounds"][-1]
    assert set(round_["fit"]) == {"hospital_a"} and "hospital_b" not in round_["budget"]


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


class CountingSite(FakeSite):
    """A FakeSite that counts the budget queries it is sent."""

    def __init__(self, cid: str, answer: dict[str, Any]) -> None:
        super().__init__(cid, answer)
        self.queries = 0

    def get_properties(self, ins, timeout, group_id):  # noqa: ANN001
        self.queries += 1
        return super().get_properties(ins, timeout, group_id)


def _fit_reply(site, *, code: Code = Code.OK, message: str = "", head: str | None = None):
    from flwr.common import FitRes

    metrics = {KEY_SITE_ID: site.site_id, "epsilon_spent": 0.5, "epsilon_max": 8.0, "delta": 1e-5,
               KEY_LEDGER_HEAD: head if head is not None else _head(site)}
    params = ndarrays_to_parameters([np.ones(2, np.float32)]) if code == Code.OK else ndarrays_to_parameters([])
    return FitRes(Status(code, message), params, 6 if code == Code.OK else 0, metrics if code == Code.OK else {})


def test_each_site_is_asked_its_budget_once_per_run_and_a_new_site_when_it_appears(federation):
    strategy, sites = federation
    a = CountingSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    b = CountingSite("2", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_b", KEY_LEDGER_HEAD: _head(sites["hospital_b"])})
    out = CountingSite("3", {KEY_ACCEPTS: 0, KEY_SITE_ID: "hospital_c", KEY_LEDGER_HEAD: _head(sites["hospital_c"])})
    manager = Manager([a, out])
    params = ndarrays_to_parameters([np.zeros(2, np.float32)])
    chosen = {}
    for round_ in (1, 2, 3):
        if round_ == 2:
            manager.proxies[b.cid] = b  # a site that connects during the run is asked when it is first seen
        chosen[round_] = sorted(p.cid for p, _ in strategy.configure_fit(round_, params, manager))
        replies = [(p, _fit_reply(sites[strategy.site_of[p.cid]])) for p in (manager.proxies[c] for c in chosen[round_])]
        strategy.aggregate_fit(round_, replies, [])
    assert chosen == {1: ["1"], 2: ["1", "2"], 3: ["1", "2"]}
    assert (a.queries, b.queries, out.queries) == (1, 1, 1)  # the declined site is not asked again either
    rounds = strategy.run_log.data["rounds"]
    # every round's budget in run.json: from the query where there was one, then from the site's own fit reply
    assert rounds[2]["budget"]["hospital_a"]["epsilon_spent"] == 0.5
    assert rounds[2]["budget"]["hospital_a"]["ledger_head_verified"] is True


def test_a_site_that_declines_inside_a_round_or_shows_a_bad_head_leaves_the_run(federation):
    strategy, sites = federation
    proxies = [FakeSite(str(i), {KEY_ACCEPTS: 1, KEY_SITE_ID: name, KEY_LEDGER_HEAD: _head(sites[name])})
               for i, name in enumerate(("hospital_a", "hospital_b", "hospital_c"), start=1)]
    manager = Manager(proxies)
    params = ndarrays_to_parameters([np.zeros(2, np.float32)])
    assert len(strategy.configure_fit(1, params, manager)) == 3
    declining = (proxies[1], _fit_reply(sites["hospital_b"], code=Code.FIT_NOT_IMPLEMENTED,
                                        message="declined: site hospital_b declines round 1: over budget"))
    # hospital_c's reply carries hospital_a's head: it does not verify against hospital_c's key
    forged = (proxies[2], _fit_reply(sites["hospital_c"], head=_head(sites["hospital_a"])))
    strategy.aggregate_fit(1, [(proxies[0], _fit_reply(sites["hospital_a"])), forged], [declining])
    declined = strategy.run_log.data["rounds"][0]["declined"]
    assert set(declined) == {"hospital_b", "hospital_c"}
    assert "over budget" in declined["hospital_b"] and "does not verify" in declined["hospital_c"]
    # neither is evaluated: hospital_b did not train, hospital_c's ledger cannot be trusted
    assert [p.cid for p, _ in strategy.configure_evaluate(1, params, manager)] == ["1"]
    assert [p.cid for p, _ in strategy.configure_fit(2, params, manager)] == ["1"]


def test_a_run_sees_sites_that_are_online_without_waiting_for_flowers_node_refresh():
    """Flower's legacy workflow lists connected nodes in a thread that first looks after 5 s; `wait_for` asks nobody,
    so on its own it reports no site for those 5 s. The strategy's wait asks the grid at once: right after the
    thread has started, Flower's wait_for sees no site, the strategy's sees all three."""
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.app_utils import start_update_client_manager_thread

    from semiofed.server.federation.strategy import wait_for_sites

    class Grid:
        class run:  # noqa: N801 - Flower reads grid.run.run_id
            run_id = 7

        def get_node_ids(self):  # noqa: ANN201
            return [11, 12, 13]

    manager = SimpleClientManager()
    thread, stop, ready = start_update_client_manager_thread(Grid(), manager)
    try:
        ready.wait()  # the thread now sleeps 5 s before its first look
        assert manager.wait_for(3, timeout=0) is False  # what configure_fit relied on: nobody has refreshed the list
        assert wait_for_sites(manager, 3, timeout=0.0) == 3
        assert sorted(manager.all()) == ["11", "12", "13"]
    finally:
        stop.set()
        thread.join()


def test_the_budget_asked_while_the_initial_model_is_built_admits_and_declines_as_in_round_1(tmp_path, federation):
    """With build_inner, initialize_parameters asks the connected sites their budget while the initial model is
    built; round 1 then asks nobody again, trains only the admitted site and books both answers to round 1."""
    _, sites = federation
    config = federation[0].config
    asked: list[str] = []

    class CountingSite(FakeSite):
        def get_properties(self, ins, timeout, group_id):  # noqa: ANN001
            asked.append(self.cid)
            return super().get_properties(ins, timeout, group_id)

    honest = CountingSite("1", {KEY_ACCEPTS: 1, KEY_SITE_ID: "hospital_a", KEY_LEDGER_HEAD: _head(sites["hospital_a"])})
    broke = CountingSite("2", {KEY_ACCEPTS: 0, KEY_SITE_ID: "hospital_b", KEY_LEDGER_HEAD: _head(sites["hospital_b"]),
                               "decline_reason": "declined: budget spent"})
    initial = ndarrays_to_parameters([np.ones(2, np.float32)])
    strategy = SiteAwareStrategy(None, config, RunLog(tmp_path / "run2", run_id="r2", config={}), run_id="r2",
                                 save_checkpoint=lambda *a: "", build_inner=lambda: build_inner_strategy(config, initial))
    manager = Manager([honest, broke])
    assert strategy.initialize_parameters(manager) is initial
    assert sorted(asked) == ["1", "2"]
    chosen = strategy.configure_fit(1, initial, manager)
    assert [proxy.cid for proxy, _ in chosen] == ["1"] and sorted(asked) == ["1", "2"]  # nobody asked twice
    first = strategy.run_log.data["rounds"][0]
    assert first["round"] == 1 and set(first["budget"]) == {"hospital_a", "hospital_b"} and set(first["declined"]) == {"hospital_b"}
    with pytest.raises(ValueError):
        SiteAwareStrategy(None, config, strategy.run_log, run_id="r3", save_checkpoint=lambda *a: "")
