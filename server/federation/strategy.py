"""The coordinator's strategy: ask each site's budget once per run, aggregate with FedAvg/FedProx/FedAdam, checkpoint.

Flower's strategies do the aggregation; this wrapper adds what a federation of
hospitals needs around it: each site is asked its budget when the run first
sees it (one message per site per run, not per round); sites that decline
(their privacy budget or policy says no) are left out, a site that declines
inside a later round is dropped from the run, and a round goes on only if at
least `min_sites` remain; every site's signed ledger head is checked
against its enrolled key; each round's global model is written as a
checkpoint that `semiofed predict` loads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    ndarrays_to_parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam, FedAvg, FedProx, Strategy

from semiofed.common.federation import evaluation
from semiofed.common.federation.run_config import (
    CFG_QUERY,
    CFG_ROUND,
    CFG_RUN_ID,
    KEY_ACCEPTS,
    KEY_DECLINE_REASON,
    KEY_FEATURE_SHA,
    KEY_LEDGER_HEAD,
    KEY_SITE_ID,
    SITE_NODES_FILE,
    STRATEGY_FEDADAM,
    STRATEGY_FEDPROX,
    FederationConfig,
)
from semiofed.server.run_log import RunLog

log = logging.getLogger(__name__)

BUDGET_KEYS = ("epsilon_spent", "epsilon_max", "epsilon_projected", "delta")


def build_inner_strategy(config: FederationConfig, initial: Parameters) -> Strategy:
    """Flower's aggregation for the configured strategy (weights: each site's number of training patients)."""
    common = dict(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=config.min_sites,
                  min_evaluate_clients=1, min_available_clients=config.min_sites, initial_parameters=initial)
    if config.strategy == STRATEGY_FEDPROX:
        return FedProx(proximal_mu=config.proximal_mu, **common)
    if config.strategy == STRATEGY_FEDADAM:
        return FedAdam(eta=config.server_lr, **common)
    return FedAvg(**common)


SITES_POLL_S = 0.2


def wait_for_sites(client_manager: ClientManager, count: int, *, timeout: float, poll_s: float = SITES_POLL_S) -> int:
    """Wait until `count` sites are connected, or `timeout` s; returns how many are.

    Flower's legacy workflow learns of connected nodes in a thread that first looks after 5 s (and every 5 s after),
    or whenever `num_available`, `all` or `sample` is called; its `wait_for` calls none of them, so a run's first
    round waited 5 s for sites that were online all along. Asking `num_available` refreshes the list at once."""
    deadline = time.monotonic() + timeout
    while True:
        available = client_manager.num_available()
        if available >= count or time.monotonic() >= deadline:
            return available
        time.sleep(poll_s)


class HeadVerifier:
    """Checks a site's signed ledger head against its enrolled public key (None when no key is enrolled), and, where
    the coordinator wrote which Flower node each key was registered as, that the head comes from that node."""

    def __init__(self, keys_dir: str) -> None:
        self.keys: dict[str, Any] = {}
        self.nodes: dict[str, str] = {}  # site name -> the Flower node id its key was registered as
        if keys_dir and Path(keys_dir).is_dir():
            from semiofed.common.privacy.keys import load_public_key

            for path in sorted(Path(keys_dir).glob("*.pub")):
                self.keys[path.stem] = load_public_key(path)
            nodes = Path(keys_dir) / SITE_NODES_FILE
            if nodes.is_file():
                self.nodes = {str(k): str(v) for k, v in json.loads(nodes.read_text(encoding="utf-8")).items()}

    def node_mismatch(self, site_id: str, node: str) -> bool:
        """True when this site's key was registered as another node: a node that shows another site's (valid) head."""
        expected = self.nodes.get(site_id)
        return expected is not None and expected != node

    def __call__(self, site_id: str, head_json: Any) -> bool | None:
        from semiofed.common.privacy.ledger import verify_head

        key = self.keys.get(site_id)
        if key is None:
            return None
        try:
            head = json.loads(str(head_json))
        except ValueError:
            return False
        return bool(head.get("site_id") == site_id and verify_head(head, key))


class SiteAwareStrategy(Strategy):
    """Budget-aware site selection and checkpoints around a Flower strategy."""

    def __init__(self, inner: Strategy | None, config: FederationConfig, run_log: RunLog, *, run_id: str,
                 save_checkpoint: Callable[[int, list[np.ndarray], dict[str, Any]], str],
                 build_inner: Callable[[], Strategy] | None = None) -> None:
        """`inner`: Flower's aggregation; or None and `build_inner`, which builds it (with the initial model) while
        the sites are asked their budget (initialize_parameters)."""
        if (inner is None) == (build_inner is None):
            raise ValueError("give the inner strategy, or a function that builds it, not both")
        self.inner: Strategy = inner  # type: ignore[assignment] - set by initialize_parameters when built
        self._build_inner = build_inner
        self._early: tuple[dict[str, Any], dict[str, str]] | None = None  # the budget answers asked before round 1
        self.config = config
        self.run_log = run_log
        self.run_id = run_id
        self.save_checkpoint = save_checkpoint
        self.verify = HeadVerifier(config.site_keys_dir)
        self.site_of: dict[str, str] = {}  # Flower node id -> site id (from budget answers whose ledger head verified)
        self.admitted: dict[str, bool] = {}  # Flower node id -> takes part in this run (asked once, when first seen)
        self.trained: set[str] = set()  # node ids of the latest round's accepted sites: the only ones evaluated
        self.pooled_temperature = 1.0
        self.extractor_sha: dict[str, str] = {}
        self.latest: list[np.ndarray] | None = None  # the global model in its wire form (common/learning/weights.py)

    def __repr__(self) -> str:
        return f"SiteAwareStrategy({self.inner!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The initial model. When the strategy builds it, the connected sites are asked their budget meanwhile: the
        ServerApp's first use of torch (2-5 s of imports on a busy 2-core machine) then overlaps the sites' answers
        (each builds its task and chooses its noise), where the two had followed each other."""
        if self._build_inner is not None:
            with ThreadPoolExecutor(max_workers=1) as pool:
                building = pool.submit(self._build_inner)
                _, budget, declined = self._admit_connected(client_manager, 1)
                self._early = (budget, declined)
                self.inner = building.result()
            self._build_inner = None
        return self.inner.initialize_parameters(client_manager)

    # --- fit ---------------------------------------------------------------
    def _ask_budget(self, proxy: ClientProxy, server_round: int) -> dict[str, Any]:
        ins = GetPropertiesIns({CFG_QUERY: "budget", CFG_RUN_ID: self.run_id, CFG_ROUND: server_round})
        try:
            res = proxy.get_properties(ins, timeout=self.config.round_timeout, group_id=server_round)
        except Exception as exc:  # a site that does not answer cannot train this round
            return {KEY_ACCEPTS: 0, KEY_DECLINE_REASON: f"no answer to the budget query ({type(exc).__name__}: {exc})"}
        return dict(res.properties)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """The sites that train this round. Each site is asked its budget once per run, when it is first seen: a site
        chooses its noise for the whole run at its first round, so what it can afford does not change within the run;
        a site whose budget or policy says no later declines inside the round, and it is dropped from the run."""
        proxies, budget, declined = self._admit_connected(client_manager, server_round)
        if self._early is not None:  # asked while the initial model was built: booked to the first round
            budget, declined = {**self._early[0], **budget}, {**self._early[1], **declined}
            self._early = None
        self.run_log.update(server_round, budget=budget, declined=declined)
        accepted = [p for p in proxies if self.admitted.get(p.cid)]
        self.trained = set()
        if len(accepted) < self.config.min_sites:
            why = f"only {len(accepted)} of {len(proxies)} sites can take part, fewer than min-sites {self.config.min_sites}"
            log.warning("round %d skipped: %s", server_round, why)
            self.run_log.update(server_round, skipped=why)
            return []
        config: dict[str, Scalar] = {CFG_ROUND: server_round, CFG_RUN_ID: self.run_id}
        self.trained = {proxy.cid for proxy in accepted}
        return [(proxy, FitIns(parameters, dict(config))) for proxy in accepted]

    def _admit_connected(self, client_manager: ClientManager, server_round: int) -> tuple[list[ClientProxy], dict[str, Any], dict[str, str]]:
        """Wait for min-sites, then ask the sites not seen yet their budget: (every connected proxy, budget, declined)."""
        wait_for_sites(client_manager, self.config.min_sites, timeout=self.config.round_timeout)
        proxies = list(client_manager.all().values())
        budget, declined = self._admit([p for p in proxies if p.cid not in self.admitted], server_round)
        return proxies, budget, declined

    def _admit(self, proxies: list[ClientProxy], server_round: int) -> tuple[dict[str, Any], dict[str, str]]:
        """Ask these (new) sites their budget; admit those that accept and show a verified ledger head."""
        if not proxies:
            return {}, {}
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(proxies)))) as pool:
            answers = list(pool.map(lambda p: self._ask_budget(p, server_round), proxies))
        budget, declined = {}, {}
        for proxy, answer in zip(proxies, answers):
            site = str(answer.get(KEY_SITE_ID, f"node-{proxy.cid}"))
            impostor = self.verify.node_mismatch(site, proxy.cid)
            impostor_reason = f"node {proxy.cid} answered as site {site}, whose key is another node's"
            if impostor:
                # another site's (replayed) head, or another site's name: this node signs in with another key. It is
                # booked as itself, never under the site it names, and does not train
                answer.pop(KEY_LEDGER_HEAD, None)
                answer[KEY_ACCEPTS] = 0
                site = f"node-{proxy.cid}"
            self.site_of[proxy.cid] = site
            verified = self.verify(site, answer.get(KEY_LEDGER_HEAD)) if KEY_LEDGER_HEAD in answer else None
            if verified is None and self.verify.keys:
                verified = False  # sites are enrolled here: a site that cannot show a verified head does not train
                answer[KEY_DECLINE_REASON] = (
                    f"site id {site} has no enrolled key here; enroll its site_key.pub with --name {site}"
                    if KEY_LEDGER_HEAD in answer else f"site id {site} sent no signed ledger head")
            if impostor:
                answer[KEY_DECLINE_REASON] = impostor_reason
            budget[site] = {k: answer[k] for k in BUDGET_KEYS if k in answer}
            budget[site].update(ledger_head_verified=verified, ledger_head=answer.get(KEY_LEDGER_HEAD))
            if KEY_FEATURE_SHA in answer:
                self.extractor_sha[site] = str(answer[KEY_FEATURE_SHA])
            self.admitted[proxy.cid] = int(answer.get(KEY_ACCEPTS, 0)) == 1 and verified is not False
            if not self.admitted[proxy.cid]:
                reason = answer.get(KEY_DECLINE_REASON) or "its ledger head does not verify against its enrolled key"
                declined[site] = str(reason)
                log.warning("round %d: site %s declines: %s", server_round, site, reason)
        return budget, declined

    def _site(self, proxy: ClientProxy, metrics: dict[str, Any]) -> str:
        """The site of a reply: the node's site from its budget answer, never only what the reply says of itself."""
        site = self.site_of.get(proxy.cid)
        claimed = metrics.get(KEY_SITE_ID)
        if site is None:
            return f"node-{proxy.cid}"
        if claimed is not None and str(claimed) != site:
            log.warning("node %s answered the budget query as site %s but now says %s", proxy.cid, site, claimed)
        return site

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        fit, problems, budget, declined = {}, [], {}, {}
        for proxy, res in results:
            site = self._site(proxy, res.metrics)
            fit[site] = {k: v for k, v in res.metrics.items() if isinstance(v, (int, float))}
            fit[site]["num_examples"] = res.num_examples
            budget[site] = {k: res.metrics[k] for k in BUDGET_KEYS if k in res.metrics}  # after this round's release
            if KEY_LEDGER_HEAD in res.metrics:
                fit[site]["ledger_head_verified"] = self.verify(site, res.metrics[KEY_LEDGER_HEAD])
                fit[site]["ledger_seq"] = json.loads(str(res.metrics[KEY_LEDGER_HEAD])).get("seq")
                budget[site].update(ledger_head_verified=fit[site]["ledger_head_verified"],
                                    ledger_head=res.metrics[KEY_LEDGER_HEAD])
                if fit[site]["ledger_head_verified"] is False:  # its update is in this round; no later round has it
                    self.admitted[proxy.cid] = False
                    declined[site] = "its ledger head after this round does not verify against its enrolled key"
        for failure in failures:
            if isinstance(failure, tuple):
                proxy, res = failure
                site = self.site_of.get(proxy.cid, f"node-{proxy.cid}")
                problems.append(f"{site}: {res.status.message}")
                if str(res.status.message).startswith("declined"):  # the site's budget or policy: out of this run
                    self.admitted[proxy.cid] = False
                    declined[site] = str(res.status.message)[:900]
            else:
                problems.append(str(failure)[:300])
        self.trained = {proxy.cid for proxy, _ in results if self.admitted.get(proxy.cid, True)}  # evaluated: these only
        if not results:
            self.run_log.update(server_round, fit=fit, failures=problems, declined=declined,
                                skipped="no site returned an update")
            return None, {}
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        checkpoint = None
        if parameters is not None:
            # SecAgg+'s dequantisation yields float64; the model (and what goes back to the sites) is float32. The arrays
            # are the weights' wire form (one flat vector): the checkpoint writer knows the model's shapes
            self.latest = [np.asarray(a, dtype=np.float32) for a in parameters_to_ndarrays(parameters)]
            parameters = ndarrays_to_parameters(self.latest)
            checkpoint = self.save_checkpoint(server_round, self.latest, {"sites": sorted(fit), "round": server_round})
        self.run_log.update(server_round, fit=fit, failures=problems, declined=declined, budget=budget, checkpoint=checkpoint)
        return parameters, metrics

    # --- evaluate ----------------------------------------------------------
    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The rounds the run evaluates (every --evaluate-every and the last) ask only the sites that trained them:
        a site that declined (out of budget, another policy) or failed its head check is asked nothing more."""
        if not self.config.evaluates(server_round):
            return []
        return [(proxy, EvaluateIns(parameters, {CFG_ROUND: server_round, CFG_RUN_ID: self.run_id}))
                for proxy in client_manager.all().values() if proxy.cid in self.trained]

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        """Each site's released vector, read as figures (common/federation/evaluation.py); pooled over the sites."""
        released, per_site, declined = {}, {}, {}
        for proxy, res in results:
            site = self._site(proxy, res.metrics)
            released[site] = {k: float(v) for k, v in res.metrics.items() if isinstance(v, (int, float))}
            per_site[site] = {**evaluation.read([released[site]]), evaluation.KEY_RELEASE: released[site].get(evaluation.KEY_RELEASE, 0.0)}
        for failure in failures:
            if isinstance(failure, tuple):
                proxy, res = failure
                declined[self.site_of.get(proxy.cid, f"node-{proxy.cid}")] = str(res.status.message)[:300]
        aggregate = evaluation.read(list(released.values()))
        if aggregate:
            aggregate["sites"] = float(len(released))
            # without validation patients the loss rows are noise only: the model stays uncalibrated (T = 1)
            if not self.config.validation:
                aggregate["temperature"] = 1.0
            self.pooled_temperature = aggregate["temperature"]
        self.run_log.update(server_round, evaluate=per_site, evaluation_declined=declined, aggregate=aggregate)
        return None, {k: v for k, v in aggregate.items() if isinstance(v, (int, float)) and math.isfinite(v)}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None  # no central data: evaluation happens at the sites

    def feature_extractor(self) -> dict[str, Any]:
        """The STCNN the sites' records were made with (name, weights sha256, dim) for the global checkpoint."""
        shas = set(self.extractor_sha.values())
        if len(shas) > 1:
            log.warning("sites report different feature extractor weights: %s", self.extractor_sha)
        return {"name": self.config.stcnn, "sha256": shas.pop() if len(shas) == 1 else "", "dim": self.config.stcnn_dim,
                "input": self.config.stcnn_input}

    def temperature(self) -> float:
        """Calibration temperature for the final model: the grid temperature of least loss on every evaluated site's
        validation patients together, from their released (noisy) sums; 1 when no site evaluated."""
        return float(self.pooled_temperature)
