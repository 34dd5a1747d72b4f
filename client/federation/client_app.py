"""The hospital's Flower ClientApp: decode a message, call the site task, encode the reply.

Flower 1.41 offers SecAgg+ only through its legacy Client API, so the app is
a legacy `Client` behind `secaggplus_mod`; the egress policy sits inside it
and sees every reply in plain form. Torch is imported only for training and
evaluation: the SecAgg+ key-exchange stages start a process each and stay fast.
"""

from __future__ import annotations

import json
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.common.secure_aggregation.secaggplus_constants import Stage as SecAggStage
from flwr.common import (
    Code,
    Context,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from semiofed.client.federation.egress import EGRESS_LOG, EgressSpec, make_egress_mod
from semiofed.common.errors import SemiofedError
from semiofed.common.federation.run_config import (
    CFG_ROUND,
    KEY_ACCEPTS,
    KEY_DECLINE_REASON,
    KEY_FEATURE_SHA,
    KEY_LEDGER_HEAD,
    KEY_SITE_ID,
    KEY_VERSION,
    FederationConfig,
)
from semiofed.common.version import semiofed_version

log = logging.getLogger(__name__)

NODE_SITE_DIR = "site-dir"
NODE_RUN_EPSILON = "run-epsilon"
NODE_RUN_WINDOW = "run-window-days"


def site_settings(node_config: dict[str, Any]) -> Any:
    """Site-only settings from the SuperNode's --node-config."""
    from semiofed.client.training.federated_round import SiteSettings

    if NODE_SITE_DIR not in node_config:
        raise SemiofedError("this SuperNode has no site directory", 'start it with `semiofed site join --site-dir DIR` (node config site-dir="DIR")')
    return SiteSettings(site_dir=Path(str(node_config[NODE_SITE_DIR])), run_epsilon=float(node_config.get(NODE_RUN_EPSILON, 0.0)),
                        run_window_days=float(node_config.get(NODE_RUN_WINDOW, SiteSettings.run_window_days)))


def run_config(context: Context) -> FederationConfig:
    """The run's config, refusing an app built for another semiofed version."""
    config = FederationConfig.from_run_config(context.run_config)
    if config.semiofed_version != semiofed_version():
        raise SemiofedError(
            f"the coordinator's app is for semiofed {config.semiofed_version or '(unknown)'}, this site runs {semiofed_version()}",
            "a site runs only the code it installed: install the same semiofed version at the coordinator and the sites",
        )
    return config


class SiteClient(Client):
    """One message's worth of a site: the task is built on demand (it loads the site's records)."""

    def __init__(self, context: Context, *, config: FederationConfig | None = None, settings: Any = None) -> None:
        self.context = context
        self.config = config or run_config(context)
        self.settings = settings or site_settings(context.node_config)
        self.run_id = str(context.run_id)

    def _weights(self, parameters: Parameters) -> list[Any]:
        """The global model's arrays from the message's wire form (one flat vector, common/learning/weights.py)."""
        from semiofed.common.learning.weights import from_wire

        return from_wire(parameters_to_ndarrays(parameters), model_shapes(run_config_json(self.config)))

    def _task(self) -> Any:
        from semiofed.client.training.federated_round import SiteTask

        return SiteTask(self.settings, self.config)

    def _identity(self, task: Any) -> dict[str, Any]:
        return {KEY_SITE_ID: task.site.site_id, KEY_VERSION: semiofed_version(), KEY_LEDGER_HEAD: task.head(),
                KEY_FEATURE_SHA: str(task.extractor.get("sha256") or "0" * 64)}

    def get_properties(self, ins: GetPropertiesIns) -> GetPropertiesRes:
        """Budget query: can this site afford the next round? Nothing is spent."""
        from semiofed.client.training.federated_round import RoundDeclined

        try:
            task = self._task()
        except RoundDeclined as exc:
            return GetPropertiesRes(Status(Code.OK, ""), {KEY_ACCEPTS: 0, KEY_DECLINE_REASON: str(exc)[:900]})
        status = task.budget_status(self.run_id)
        props = {k: float(status[k]) for k in ("epsilon_spent", "epsilon_max", "epsilon_remaining", "epsilon_projected", "delta")}
        props.update({KEY_ACCEPTS: int(status["accepts"]), KEY_DECLINE_REASON: status["decline_reason"], **self._identity(task)})
        return GetPropertiesRes(Status(Code.OK, ""), props)

    def fit(self, ins: FitIns) -> FitRes:
        """Train one round from the global weights, or decline with the site's reason."""
        from semiofed.client.training.federated_round import RoundDeclined

        round_ = int(ins.config.get(CFG_ROUND, 0))
        try:
            task = self._task()
            weights, n, metrics = task.fit(self._weights(ins.parameters), run_id=self.run_id, round=round_)
        except RoundDeclined as exc:
            log.warning("%s", exc)
            return FitRes(Status(Code.FIT_NOT_IMPLEMENTED, f"declined: {str(exc)[:900]}"), Parameters([], ""), 0, {})
        from semiofed.common.learning.weights import to_wire

        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(to_wire(weights)), n, {**metrics, **self._identity(task)})

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        """Evaluate the global model on this site's held-out patients: the one release of
        common/federation/evaluation.py (no loss, no example count), or a decline with the site's reason."""
        from semiofed.client.training.federated_round import RoundDeclined

        round_ = int(ins.config.get(CFG_ROUND, 0))
        try:
            task = self._task()
            metrics = task.evaluate(self._weights(ins.parameters), run_id=self.run_id, round=round_)
        except RoundDeclined as exc:
            log.warning("%s", exc)
            return EvaluateRes(Status(Code.EVALUATE_NOT_IMPLEMENTED, f"declined: {str(exc)[:900]}"), 0.0, 0, {})
        return EvaluateRes(Status(Code.OK, ""), 0.0, 0, {**metrics, KEY_SITE_ID: task.site.site_id})


def run_config_json(config: FederationConfig) -> str:
    return json.dumps(config.to_run_config(), sort_keys=True, default=str)


@lru_cache(maxsize=4)
def model_shapes(config_json: str) -> tuple[tuple[int, ...], ...]:
    """The shapes of the run's model arrays, in state_dict order (the run config fixes the model)."""
    from semiofed.common.learning.classifier import build_classifier, classifier_config
    from semiofed.common.learning.weights import weight_shapes

    return weight_shapes(build_classifier(classifier_config(FederationConfig.from_run_config(json.loads(config_json)))))


@lru_cache(maxsize=4)
def _egress_spec(site_dir: str, run_config_json: str) -> EgressSpec:
    from semiofed.client.site import open_site
    from semiofed.common.privacy.keys import load_public_key
    from semiofed.common.privacy.ledger import verify_head

    site = open_site(Path(site_dir))
    public_key = load_public_key(site.layout.public_key)
    size = sum(math.prod(shape) for shape in model_shapes(run_config_json))
    # what may leave: the update in its wire form, one flat float32 vector of the model's size
    return EgressSpec(site_id=site.site_id, version=semiofed_version(), array_shapes=((size,),),
                      verify_head=lambda head: verify_head(head, public_key), log_path=site.layout.root / EGRESS_LOG)


def egress_spec(context: Context, *, config: FederationConfig | None = None, settings: Any = None) -> EgressSpec:
    """The egress policy for this site and run."""
    settings = settings or site_settings(context.node_config)
    raw = config.to_run_config() if config is not None else dict(context.run_config)
    return _egress_spec(str(settings.site_dir), json.dumps(raw, sort_keys=True, default=str))


def client_fn(context: Context) -> Client:
    """Flower's factory: one SiteClient per message."""
    return SiteClient(context)


class SecureAggregationRefused(RuntimeError):
    """The coordinator asked for an update that SecAgg+ would not hide as the site's policy requires."""


def secure_aggregation_problem(msg: Any, config: FederationConfig, settings: Any) -> str | None:
    """Why this train message must not be answered under the site's SecAgg+ rules, or None.

    A distributed-DP update carries only part of the noise, so it may leave only masked by SecAgg+ and only in a
    sum of at least the site's own K sites: the Shamir threshold the coordinator sets in the setup stage must be at
    least K. A site whose policy requires SecAgg+ refuses a plain train message and a threshold below its minimum.
    Every site refuses an unmask stage naming a node both alive and dropped: the coordinator would get both of that
    node's secrets and could unmask its update alone.
    """
    from semiofed.client.site import SiteLayout
    from semiofed.common.privacy.policy import load_policy

    policy = load_policy(SiteLayout(Path(settings.site_dir)).policy_file)
    least = 0
    if config.distributed:
        if not policy.distributed_dp_sites:
            return "this site takes part in local-DP runs only (its policy's distributed_dp_sites is 0)"
        least = policy.distributed_dp_sites
    if policy.require_secure_aggregation:
        least = max(least, policy.min_secure_aggregation_threshold)
    configs = msg.content.config_records.get(SECAGG_CONFIGS)
    if configs is None:
        if config.distributed:
            return "a distributed-DP update may leave this site only masked by SecAgg+, and this train message has no SecAgg+"
        if policy.require_secure_aggregation:
            return "this site's policy lets an update leave only masked by SecAgg+, and this train message has no SecAgg+"
        return None
    stage = configs.get(SecAggKey.STAGE)
    if stage == SecAggStage.SETUP and least:
        threshold = configs.get(SecAggKey.THRESHOLD)
        if not isinstance(threshold, int) or threshold < least:
            return (f"the SecAgg+ reconstruction threshold is {threshold}: a sum of fewer than the {least} sites this "
                    "site's policy needs could be unmasked")
    if stage == SecAggStage.UNMASK:
        alive = set(configs.get(SecAggKey.ACTIVE_NODE_ID_LIST, []) or [])
        dropped = set(configs.get(SecAggKey.DEAD_NODE_ID_LIST, []) or [])
        if alive & dropped or msg.metadata.dst_node_id in dropped:
            return "the unmask stage names a node both alive and dropped (or this site as dropped): its update would be unmasked"
    return None


MAX_DECLINE_CHARS = 900  # SiteClient's decline texts are cut at this length


class DeclinedInSecureRound(RuntimeError):
    """The site declined a SecAgg+ round after its keys were shared: it drops out (the others' round goes on)."""


def _failing_on_decline(call_next: Callable[..., Any]) -> Callable[..., Any]:
    """The app below SecAgg+, made to raise when the site declines to train: SecAgg+ would otherwise mask an empty
    update and send it (a vector of the wrong shape, spoiling the sum); an error is a dropout the round survives."""
    from flwr.compat.common import recorddict_compat as compat

    def call(msg: Any, context: Context) -> Any:
        reply = call_next(msg, context)
        if not reply.has_error():
            status = compat.recorddict_to_fitres(reply.content, keep_input=True).status
            if status.code != Code.OK:  # the egress policy checked this text in the fit reply: it may leave as it is
                raise DeclinedInSecureRound(str(status.message)[:MAX_DECLINE_CHARS])
        return reply

    return call


def narrow_masked_vector(reply: Any) -> Any:
    """The masked update as 4-byte integers where Flower sends 8: its values lie in [0, modulus) and the modulus the
    coordinator configures is 2**32, so nothing is lost, and a SecAgg+ update costs what the float32 model does. The
    coordinator widens them again (server_app._SecAggGrid). Values of a larger modulus are left as they are."""
    import numpy as np
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes

    if reply.has_error():
        return reply
    configs = reply.content.config_records.get(SECAGG_CONFIGS)
    if configs is None or SecAggKey.MASKED_PARAMETERS not in configs:
        return reply
    arrays = [bytes_to_ndarray(b) for b in configs[SecAggKey.MASKED_PARAMETERS]]
    if all(a.size == 0 or (int(a.min()) >= 0 and int(a.max()) < 2**32) for a in arrays):
        configs[SecAggKey.MASKED_PARAMETERS] = [ndarray_to_bytes(a.astype(np.uint32)) for a in arrays]
    return reply


def make_secure_aggregation_mod(run_of: Callable[[Context], tuple[FederationConfig, Any]]) -> Callable[..., Any]:
    """SecAgg+ for the train messages of a run that uses it; a run without it (--no-secure-aggregation) passes through.

    `run_of(context)` gives the run config and the site settings. A distributed-DP run's train messages are
    refused unless SecAgg+ hides the update among enough sites."""

    def secure_aggregation_mod(msg: Any, context: Context, call_next: Any) -> Any:
        if msg.metadata.message_type == "train":
            problem = secure_aggregation_problem(msg, *run_of(context))
            if problem is not None:
                log.error("refused a train message: %s", problem)
                raise SecureAggregationRefused(f"secure aggregation refused: {problem}")
            if SECAGG_CONFIGS in msg.content.config_records:
                return narrow_masked_vector(secaggplus_mod(msg, context, _failing_on_decline(call_next)))
        return call_next(msg, context)

    return secure_aggregation_mod


secure_aggregation_mod = make_secure_aggregation_mod(lambda context: (run_config(context), site_settings(context.node_config)))


# secure aggregation first (outermost): it masks what the egress policy already let through.
app = ClientApp(client_fn=client_fn, mods=[secure_aggregation_mod, make_egress_mod(egress_spec)])
