"""The coordinator's Flower ServerApp: read the run config, build the strategy and workflow, write the global model.

Flower 1.41 runs SecAgg+ only in its legacy workflow API, so the app drives a
legacy strategy through `DefaultWorkflow`, with `SecAggPlusWorkflow` for the
fit stage when secure aggregation is on (the default): the coordinator then
sees only the weighted sum of the sites' updates.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import Code, Context, FitRes, Parameters, Status, bytes_to_ndarray, ndarray_to_bytes, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_RECORD
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from semiofed.common.errors import SemiofedError
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.files import write_json_atomic
from semiofed.server.run_log import STATUS_FAILED, STATUS_FINISHED, RunLog
from semiofed.server.federation.strategy import SiteAwareStrategy, build_inner_strategy

log = logging.getLogger(__name__)

LATEST_FILE = "latest.json"
# SecAgg+: each site's secrets are shared with every other sampled site, and half of the shares (at least 2) rebuild a
# dropped site's masks, so a run of 3 survives one drop-out. Parameters are clipped to +-8 (the classifier's weights
# stay well inside) and quantised after Flower scales each update by n / max_weight. 2**24 levels over the range of 16
# is what float32 resolves there (finer levels only quantise float32 rounding), so the aggregate's error is about
# N * 16 / 2**24 * max_weight / (sum of the N sites' training patients): ~7e-5 for 3 sites of 13 patients, ~4e-6 for
# 3 sites of 200. The masked sum stays below the 2**32 modulus up to 256 sites.
SECAGG_CLIPPING_RANGE = 8.0
SECAGG_QUANTIZATION = 2**24
SECAGG_MAX_WEIGHT = 1000.0  # training patients of the largest site; a larger site's weight would be capped


REPLY_POLL_S = 0.2  # Flower 1.41's grid sleeps 3 s between pulls; a warm site worker answers a SecAgg+ key stage in milliseconds


class TimeoutGrid:
    """A Grid whose send_and_receive waits at most `timeout` seconds, so a dropped site cannot hang a round, and
    pulls the replies every REPLY_POLL_S (with the grid's own push_messages/pull_messages)."""

    def __init__(self, grid: Grid, timeout: float, *, poll_s: float = REPLY_POLL_S) -> None:
        self._grid, self._timeout, self._poll_s = grid, timeout, poll_s

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        waiting = set(self._grid.push_messages(messages))
        replies: list[Any] = []
        while True:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting or time.monotonic() >= deadline:
                return replies
            time.sleep(self._poll_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


SECAGG_MODULUS = 2**32  # Flower's mask modulus; the sum of every site's quantised update must stay below it


def secagg_shape(config: FederationConfig, n_sites: int | None) -> dict[str, Any]:
    """num_shares, reconstruction_threshold and quantization_range of the run's SecAgg+ for `n_sites` sites (None: not
    known, the complete graph).

    Local DP: a sparse share graph of 2*ceil(log2 n)+1 neighbours, threshold above half of them (Bell et al. 2020),
    so that the key shares and the unmasking grow as n log n, not n^2; the complete graph where that is not smaller.
    Distributed DP: the complete graph with threshold min-sites (each site checks it against its own K).
    Quantisation: n sites' values, each below quantization_range, must sum below the modulus (no wrap-around)."""
    n = max(int(n_sites or 0), 0)
    quantization = SECAGG_QUANTIZATION if n == 0 else min(SECAGG_QUANTIZATION, SECAGG_MODULUS // (n + 1))
    if config.distributed or n == 0:
        return {"num_shares": 1.0, "reconstruction_threshold": config.min_sites if config.distributed else 0.5,
                "quantization_range": quantization}
    neighbours = 2 * math.ceil(math.log2(max(n, 2))) + 1
    if neighbours >= n:
        return {"num_shares": 1.0, "reconstruction_threshold": 0.5, "quantization_range": quantization}
    return {"num_shares": neighbours, "reconstruction_threshold": neighbours // 2 + 1, "quantization_range": quantization}


class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, with a site lost in the setup or share_keys stage left out of the round.

    Such a site sent no key shares (or no keys), so no other site masks its update with it or holds a share of its
    secrets. Flower 1.41 still lists it as dropped in the unmask stage, asks the others for shares of its secret key,
    and they fail on it (secaggplus_mod._unmask: KeyError): one site lost early loses the whole round. Here the
    round's sites become those still in after share_keys; the threshold is checked against them. A site lost later
    (collect_masked_vectors) is a dropout as Flower handles it: its pairwise masks are rebuilt from the shares.

    The round's failures reach the strategy named: (the node's proxy, a FitRes carrying the reply's error text), from
    the node the SuperLink authenticated as the reply's sender, so a site that declines inside the round (its budget)
    is booked as declining, where Flower passes anonymous exceptions."""

    def __call__(self, grid: Any, context: Any) -> None:
        self._errors: dict[int, str] = {}
        super().__call__(_SecAggGrid(grid, self._errors), context)

    def unmask_stage(self, grid: Any, context: Any, state: Any) -> bool:
        named = [(state.nid_to_proxies[nid], FitRes(Status(Code.FIT_NOT_IMPLEMENTED, reason[:900]), Parameters([], ""), 0, {}))
                 for nid, reason in self._errors.items() if nid in state.nid_to_proxies]
        state.failures = named + [f for f in state.failures if not isinstance(f, Exception)]
        return super().unmask_stage(grid, context, state)

    def setup_stage(self, grid: Any, context: Any, state: Any) -> bool:
        ok = super().setup_stage(grid, context, state)
        if ok or not state.nid_to_publickeys:  # nothing sampled, or nobody sent keys: nothing to save
            return ok
        return self._without_lost_sites(state)

    def share_keys_stage(self, grid: Any, context: Any, state: Any) -> bool:
        super().share_keys_stage(grid, context, state)
        return self._without_lost_sites(state)

    def _without_lost_sites(self, state: Any) -> bool:
        lost = state.sampled_node_ids - state.active_node_ids
        if lost:
            log.warning("SecAgg+: %d site(s) lost before sharing their keys leave this round", len(lost))
        state.sampled_node_ids = set(state.active_node_ids)
        return self._check_threshold(state)


class _SecAggGrid:
    """The grid as SecAgg+ uses it: notes each error reply's text under the node it came from, and widens a masked
    update a site sent as 4-byte integers (client_app.narrow_masked_vector) back to the int64 Flower sums."""

    def __init__(self, grid: Any, errors: dict[int, str]) -> None:
        self._grid, self._errors = grid, errors

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                self._errors.setdefault(reply.metadata.src_node_id, str(reply.error.reason or "an error reply"))
                continue
            configs = reply.content.config_records.get(SECAGG_RECORD)
            if configs is not None and SecAggKey.MASKED_PARAMETERS in configs:
                configs[SecAggKey.MASKED_PARAMETERS] = [ndarray_to_bytes(bytes_to_ndarray(b).astype(np.int64))
                                                        for b in configs[SecAggKey.MASKED_PARAMETERS]]
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def secure_fit_workflow(config: FederationConfig, n_sites: int | None = None) -> SecAggPlusWorkflow:
    """SecAgg+ for the fit stage; a site that drops out at any stage does not hang or spoil the round while enough
    sites remain."""
    # Distributed DP: no sum of fewer than min-sites updates may be unmasked, so that it carries the noise every site
    # accounted (each site checks this threshold before it shares anything: client/federation/client_app.py)
    return DropoutTolerantSecAggPlus(**secagg_shape(config, n_sites), clipping_range=SECAGG_CLIPPING_RANGE,
                              max_weight=SECAGG_MAX_WEIGHT, modulus_range=SECAGG_MODULUS, timeout=config.round_timeout)


def expected_sites(config: FederationConfig, grid: Any) -> int | None:
    """How many sites the run may sum: the enrolled keys, or the nodes connected now, whichever is larger."""
    enrolled = len(list(Path(config.site_keys_dir).glob("*.pub"))) if config.site_keys_dir else 0
    try:
        connected = len(list(grid.get_node_ids()))
    except Exception:  # noqa: BLE001 - a grid that cannot list its nodes yet: rely on the enrolment
        connected = 0
    return max(enrolled, connected) or None


def initial_weights(config: FederationConfig) -> list[np.ndarray]:
    """A fresh model, or the weights of `resume_from` (a global checkpoint of the same shape)."""
    from semiofed.common.learning.checkpoint import load_checkpoint
    from semiofed.common.learning.classifier import build_classifier, classifier_config
    from semiofed.common.learning.weights import get_weights

    model = build_classifier(classifier_config(config), seed=config.seed)
    if config.resume_from:
        checkpoint = load_checkpoint(Path(config.resume_from))
        if checkpoint.config != model.config:
            raise SemiofedError(f"checkpoint {config.resume_from} has another model shape than this run",
                                "resume with the run config the checkpoint was trained with")
        return get_weights(checkpoint.model)
    return get_weights(model)


def initial_parameters(config: FederationConfig) -> Parameters:
    """The round-1 model as the sites receive it: its wire form (one flat vector, common/learning/weights.py)."""
    from semiofed.common.learning.weights import to_wire

    return ndarrays_to_parameters(to_wire(initial_weights(config)))


class GlobalCheckpoints:
    """Writes each round's global model (and the final one) as checkpoints `semiofed predict` loads."""

    def __init__(self, root: Path, config: FederationConfig, run_id: str) -> None:
        self.root, self.config, self.run_id = root, config, run_id
        self.model: Any = None  # built at the first save (torch)

    def save(self, name: str, wire: list[np.ndarray], meta: dict[str, Any]) -> str:
        """Write the global model given in its wire form (the flat vector the sites receive)."""
        from semiofed.common.learning.checkpoint import save_checkpoint
        from semiofed.common.learning.classifier import build_classifier, classifier_config
        from semiofed.common.learning.weights import from_wire, set_weights, weight_shapes

        if self.model is None:
            self.model = build_classifier(classifier_config(self.config), seed=self.config.seed)
        set_weights(self.model, from_wire(wire, weight_shapes(self.model)))
        path = save_checkpoint(self.root / name, self.model, {
            "labels": list(self.config.labels), "streams": list(self.config.streams),
            "training": {"federated": True, "run_id": self.run_id, **self.config.to_run_config()},
            **meta,
        })
        write_json_atomic(self.root.parent / LATEST_FILE, {"run_id": self.run_id, "checkpoint": str(path)}, mode=0o644)
        return str(path)


def run_federation(grid: Grid, context: Context, config: FederationConfig) -> Path:
    """Run all rounds; returns the final global checkpoint."""
    run_id = str(context.run_id)
    root = Path(config.checkpoints_dir or "checkpoints").resolve()
    run_dir = root / f"run-{run_id}"
    run_log = RunLog(run_dir, run_id=run_id, config=config.to_run_config())
    checkpoints = GlobalCheckpoints(run_dir, config, run_id)
    strategy: SiteAwareStrategy | None = None

    def save_round(server_round: int, weights: list[np.ndarray], meta: dict[str, Any]) -> str:
        assert strategy is not None
        return checkpoints.save(f"round-{server_round:03d}", weights,
                                {**meta, "feature_extractor": strategy.feature_extractor(), "temperature": strategy.temperature()})

    try:
        # the initial model (torch's first import in this process) is built while the sites are asked their budget
        strategy = SiteAwareStrategy(None, config, run_log, run_id=run_id, save_checkpoint=save_round,
                                     build_inner=lambda: build_inner_strategy(config, initial_parameters(config)))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=config.rounds, round_timeout=config.round_timeout),
                               strategy=strategy)
        fit = secure_fit_workflow(config, expected_sites(config, grid)) if config.secure_aggregation else None
        DefaultWorkflow(fit_workflow=fit)(TimeoutGrid(grid, config.round_timeout), legacy)
        if strategy.latest is None:
            raise SemiofedError("no round produced a global model (every round was skipped or failed)",
                                "see run.json: sites declined (budget) or dropped; start more sites or lower --min-sites")
        budget = {site: entry for r in run_log.data["rounds"] for site, entry in r["budget"].items()}
        final = checkpoints.save("final", strategy.latest, {
            "feature_extractor": strategy.feature_extractor(), "temperature": strategy.temperature(),
            "privacy": {"dp": True, "privacy_unit": "patient", "enforced_by": "each site (local DP-SGD)",
                        "secure_aggregation": config.secure_aggregation, "sites": budget},
            "metrics": {"federated": run_log.data["rounds"][-1].get("aggregate", {})},
        })
        run_log.finish(STATUS_FINISHED, final_checkpoint=final)
        log.info("final global model written to %s", final)
        return Path(final)
    except BaseException as exc:
        run_log.finish(STATUS_FAILED, error=str(exc)[:500])
        raise


def make_server_app(config: FederationConfig | None = None) -> ServerApp:
    """The ServerApp; with `config` None the run config comes with the app (`semiofed coordinator run`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, context, config or FederationConfig.from_run_config(context.run_config))

    return server_app


app = make_server_app()
