"""SecAgg+ as the coordinator runs it (server_app.secure_fit_workflow) gives FedAvg's weighted mean, in Flower's simulation engine.

Three virtual sites send fixed, known updates of the run's classifier shapes
with different patient counts, masked by `secaggplus_mod`; the coordinator
unmasks only the sum. The result is compared with the exact weighted mean,
within the error SecAgg+'s quantisation allows.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.simulation import run_simulation

from semiofed.common.learning.classifier import classifier_config
from semiofed.common.learning.weights import get_weights
from semiofed.common.learning.classifier import build_classifier
from semiofed.common.federation.run_config import FederationConfig
from semiofed.server.federation.server_app import secure_fit_workflow

CONFIG = FederationConfig(temporal="attn", hidden=8, embed_dim=8, n_segments=4, stcnn_dim=16, rounds=1, min_sites=3,
                          round_timeout=120.0)
SHAPES = [w.shape for w in get_weights(build_classifier(classifier_config(CONFIG), seed=0))]
TRAIN_PATIENTS = (6, 9, 23)  # each site's FedAvg weight: its training patients, as SiteTask.fit reports them
MANY_SITES = 11  # above 2*ceil(log2 n)+1 = 9 neighbours: the sparse share graph of server_app.secagg_shape


def site_update(site: int) -> list[np.ndarray]:
    """The fixed update virtual site `site` sends: weights of the size a trained classifier has."""
    rng = np.random.default_rng(1000 + site)
    return [rng.normal(0.0, 0.3, size=shape).astype(np.float32) for shape in SHAPES]


class FixedSite(NumPyClient):
    """A site that answers every fit with its fixed update and patient count."""

    def __init__(self, site: int) -> None:
        self.site = site

    def fit(self, parameters, config):
        return site_update(self.site), patients_of(self.site), {}


def patients_of(site: int) -> int:
    return TRAIN_PATIENTS[site] if site < len(TRAIN_PATIENTS) else 5 + 3 * site


def client_fn(context: Context):
    return FixedSite(int(context.node_config["partition-id"])).to_client()


class CapturingFedAvg(FedAvg):
    """FedAvg that keeps what it was given and what it returned."""

    def __init__(self, seen: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen = seen

    def aggregate_fit(self, server_round, results, failures):
        self.seen["results"] = [(res.num_examples, parameters_to_ndarrays(res.parameters)) for _, res in results]
        self.seen["failures"] = failures
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        self.seen["aggregate"] = parameters_to_ndarrays(parameters)
        return parameters, metrics


def make_server_app(seen: dict, n_sites: int = 3) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = ndarrays_to_parameters([np.zeros(shape, np.float32) for shape in SHAPES])
        strategy = CapturingFedAvg(seen, fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n_sites,
                                   min_available_clients=n_sites, initial_parameters=initial)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1, round_timeout=CONFIG.round_timeout),
                               strategy=strategy)
        workflow = secure_fit_workflow(CONFIG, n_sites)
        seen["num_shares"] = workflow.num_shares
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

    return app


def quantisation_tolerance(counts: tuple[int, ...]) -> float:
    """The most SecAgg+'s aggregate can differ from the exact weighted mean, per coordinate.

    Each site scales its update by r_i = round(n_i / max_weight * T) / T (T the quantization range),
    clips it to +-clipping_range and rounds it stochastically onto T levels over that range: an error
    below one level, 2 * clipping_range / T, per site and coordinate. The coordinator sums the N
    sites and divides by sum(r_i): at most N * level / sum(r_i). The weights r_i themselves are off
    n_i / max_weight by at most 1 / (2T) each, which moves the mean by at most 2 * max|x| * N / (2T) / sum(r_i).
    Note the division by sum(r_i) ~ sum(n_i) / max_weight: with few patients per site the error is
    max_weight / sum(n_i) times one quantisation level, far above one level.
    """
    workflow = secure_fit_workflow(CONFIG, len(counts))
    levels, clip, max_weight = workflow.quantization_range, workflow.clipping_range, workflow.max_weight
    ratios = [round(n / max_weight * levels) / levels for n in counts]
    # float32 updates resolve the shifted range [0, 2 * clip) no finer than 2 * clip * eps32: a level cannot be finer
    level = 2 * clip / levels + 2 * clip * float(np.finfo(np.float32).eps)
    largest = max(float(np.abs(w).max()) for site in range(len(counts)) for w in site_update(site))
    return (len(counts) * level + 2 * largest * len(counts) / (2 * levels)) / sum(ratios) + 1e-9


def _narrowing_secaggplus_mod(msg, context, call_next):
    """secaggplus_mod with the site's wire format: the masked update sent as 4-byte integers."""
    from semiofed.client.federation.client_app import narrow_masked_vector

    return narrow_masked_vector(secaggplus_mod(msg, context, call_next))


@pytest.mark.parametrize(("n_sites", "narrow"), [(3, False), (3, True), (MANY_SITES, True)])
def test_secaggplus_aggregate_is_the_weighted_mean(n_sites, narrow):
    seen: dict = {}
    client_app = ClientApp(client_fn=client_fn, mods=[_narrowing_secaggplus_mod if narrow else secaggplus_mod])
    run_simulation(server_app=make_server_app(seen, n_sites), client_app=client_app, num_supernodes=n_sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0, "logging_level": "ERROR"}})

    assert "aggregate" in seen, "the round did not reach aggregation"
    assert seen["failures"] == []
    # 3 sites: the complete graph; 11: each site shares its keys with 9 neighbours only (server_app.secagg_shape)
    assert seen["num_shares"] == (1.0 if n_sites == 3 else 9)
    counts = tuple(n for n, _ in seen["results"])
    expected_counts = tuple(patients_of(site) for site in range(n_sites))
    assert sorted(counts) == sorted(expected_counts)  # the patient counts travel in plain, the updates do not
    updates = [site_update(site) for site in range(n_sites)]
    exact = [sum(n * u[i].astype(np.float64) for n, u in zip(expected_counts, updates)) / sum(expected_counts)
             for i in range(len(SHAPES))]
    aggregate = seen["aggregate"]
    assert [a.shape for a in aggregate] == SHAPES
    error = max(float(np.abs(a - e).max()) for a, e in zip(aggregate, exact))
    assert error <= quantisation_tolerance(expected_counts), (error, quantisation_tolerance(expected_counts))
    assert error > 0  # it did go through quantisation (a plain FedAvg would be exact to float precision)

    # the strategy never saw a site's own update: every result carries the unmasked sum only
    for _, params in seen["results"]:
        assert all(np.allclose(p, a, rtol=0, atol=1e-9) for p, a in zip(params, aggregate))
        for update in updates:
            assert max(float(np.abs(p - u).max()) for p, u in zip(params, update)) > 0.1


def _dropping_mod(stage: str, victim: int):
    """A mod outside secaggplus_mod: site `victim` fails the message of SecAgg+ stage `stage`, as a site that dies then."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    def mod(msg, context, call_next):
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if int(context.node_config["partition-id"]) == victim and configs is not None and configs.get(Key.STAGE) == stage:
            raise RuntimeError(f"site {victim} is gone during {stage}")
        return call_next(msg, context)

    return mod


@pytest.mark.parametrize("stage", ["setup", "share_keys", "collect_masked_vectors"])
def test_a_site_lost_during_a_secagg_stage_leaves_the_round_to_the_others(stage):
    """Four sites (threshold 2): one fails in the middle of the protocol; the round still aggregates, from the
    sites that remain, the weighted mean of exactly their updates."""
    n_sites, victim = 4, 3
    seen: dict = {}
    client_app = ClientApp(client_fn=client_fn, mods=[_dropping_mod(stage, victim), secaggplus_mod])
    run_simulation(server_app=make_server_app(seen, n_sites), client_app=client_app, num_supernodes=n_sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0, "logging_level": "ERROR"}})

    assert "aggregate" in seen, f"the round did not survive a site lost during {stage}"
    survivors = [s for s in range(n_sites) if s != victim]
    counts = tuple(patients_of(s) for s in survivors)
    assert sorted(n for n, _ in seen["results"]) == sorted(counts)
    updates = [site_update(s) for s in survivors]
    exact = [sum(n * u[i].astype(np.float64) for n, u in zip(counts, updates)) / sum(counts) for i in range(len(SHAPES))]
    error = max(float(np.abs(a - e).max()) for a, e in zip(seen["aggregate"], exact))
    assert error <= quantisation_tolerance(counts), (error, quantisation_tolerance(counts))


class DecliningSite(FixedSite):
    """Site `victim` declines to train inside the round (its budget said no after the keys were shared)."""

    def __init__(self, site: int, victim: int) -> None:
        super().__init__(site)
        self.victim = victim

    def to_client(self):
        from flwr.common import Code, FitRes, Parameters, Status

        client = super().to_client()
        if self.site == self.victim:
            client.fit = lambda ins: FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "declined: over budget"), Parameters([], ""), 0, {})
        return client


def test_a_site_declining_inside_a_secure_round_drops_out_and_the_others_aggregate():
    """With the budget asked once per run, a site may decline inside a SecAgg+ round; it must drop out (an error)
    rather than let SecAgg+ mask its empty update into the sum (client_app._failing_on_decline)."""
    from semiofed.client.federation.client_app import _failing_on_decline

    n_sites, victim = 4, 1
    seen: dict = {}
    client_app = ClientApp(client_fn=lambda context: DecliningSite(int(context.node_config["partition-id"]), victim).to_client(),
                           mods=[lambda msg, context, call_next: secaggplus_mod(msg, context, _failing_on_decline(call_next))])
    run_simulation(server_app=make_server_app(seen, n_sites), client_app=client_app, num_supernodes=n_sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "num_gpus": 0, "logging_level": "ERROR"}})
    assert "aggregate" in seen, "the round did not survive a site declining inside it"
    assert [a.shape for a in seen["aggregate"]] == SHAPES  # an empty update masked into the sum spoils its shapes
    # the strategy is told which site failed (the node the reply came from), not given an anonymous exception
    assert len(seen["failures"]) == 1 and isinstance(seen["failures"][0], tuple), seen["failures"]
    survivors = [s for s in range(n_sites) if s != victim]
    counts = tuple(patients_of(s) for s in survivors)
    exact = [sum(n * site_update(s)[i].astype(np.float64) for n, s in zip(counts, survivors)) / sum(counts)
             for i in range(len(SHAPES))]
    error = max(float(np.abs(a - e).max()) for a, e in zip(seen["aggregate"], exact))
    assert error <= quantisation_tolerance(counts), (error, quantisation_tolerance(counts))


def test_the_masked_update_travels_in_four_bytes_a_value_and_is_summed_unchanged():
    """narrow_masked_vector halves what a site sends in collect_masked_vectors; the coordinator's grid widens it back
    to exactly the int64 values Flower sums (masked values lie in [0, 2**32): nothing is lost)."""
    from types import SimpleNamespace

    from flwr.common import ConfigRecord, RecordDict, bytes_to_ndarray, ndarray_to_bytes
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    from semiofed.client.federation.client_app import narrow_masked_vector
    from semiofed.server.federation.server_app import _SecAggGrid

    rng = np.random.default_rng(0)
    masked = [rng.integers(0, 2**32, size=shape, dtype=np.int64) for shape in ((1000,), (50, 40), (7,))]

    def reply_with(arrays):
        content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.MASKED_PARAMETERS: [ndarray_to_bytes(a) for a in arrays]})})
        return SimpleNamespace(content=content, has_error=lambda: False)  # what both ends read of a reply

    wire = narrow_masked_vector(reply_with(masked))
    sent = wire.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
    assert sum(len(b) for b in sent) < 0.55 * sum(len(ndarray_to_bytes(a)) for a in masked)

    class Loopback:
        def send_and_receive(self, messages, *, timeout=None):
            return [wire]

    received = _SecAggGrid(Loopback(), {}).send_and_receive([])[0]
    widened = [bytes_to_ndarray(b) for b in received.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
    assert all(w.dtype == np.int64 and np.array_equal(w, m) for w, m in zip(widened, masked))
    # values of a larger modulus than 2**32 are sent as Flower sends them
    big = [np.array([2**40, 5], dtype=np.int64)]
    kept = narrow_masked_vector(reply_with(big)).content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
    assert bytes_to_ndarray(kept[0]).dtype == np.int64
