"""What every site and the coordinator agree on for a federated run: the run config and the message keys.

Three tiers of configuration (docs/federation.md):
- the run config below (rounds, model shape, local training schedule, secure
  aggregation), fixed for a run and sent by the coordinator in the app;
- site-only settings (the site's policy and paths), never sent by the server;
- per-round values in the server's ConfigRecord (the round number).
Importable without torch, so the SecAgg+ stages of a ClientApp start fast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from semiofed.common.federation.evaluation import release_keys
from semiofed.common.constants import OPTIMIZERS, STCNN_INPUT_PATIENT, STCNN_INPUTS, TEMPORAL_MODELS
from semiofed.common.errors import SemiofedError
from semiofed.common.learning.spec import DEFAULT_MODEL, DEFAULT_SCHEDULE, ModelSpec, parse_descriptors

STRATEGY_FEDAVG = "fedavg"
STRATEGY_FEDPROX = "fedprox"
STRATEGY_FEDADAM = "fedadam"
STRATEGIES = (STRATEGY_FEDAVG, STRATEGY_FEDPROX, STRATEGY_FEDADAM)
# How a site's update is noised (docs/privacy.md): "local", each update carries the full DP noise; "distributed",
# each site adds sigma / sqrt(K - colluders) of it and only SecAgg+'s sum of at least K sites carries the full sigma.
# Distributed rounds take one DP step each (the sum of single noisy gradients is exactly DP-SGD on the union of
# the sites' patients; several local steps would not add up that way), and the server's Adam (FedAdam) steps
# with the summed noisy gradient.
DP_LOCAL = "local"
DP_DISTRIBUTED = "distributed"
DP_MODES = (DP_LOCAL, DP_DISTRIBUTED)

# --- per-round config (server -> site) ---------------------------------------
CFG_ROUND = "round"
CFG_RUN_ID = "run_id"
CFG_QUERY = "query"  # get_properties: "budget" asks whether the site can afford the next round

# in FederationConfig.site_keys_dir, beside the enrolled keys: {site name: the Flower node id its key was registered
# as}, written by the coordinator (server/coordinator.py), read by the run's strategy (never sent to a site)
SITE_NODES_FILE = "nodes.json"

# --- site -> server: the only keys the egress policy lets out -----------------
KEY_SITE_ID = "site_id"
KEY_LEDGER_HEAD = "ledger_head"  # the site's signed ledger head (JSON)
KEY_ACCEPTS = "accepts"  # 1 if the site will train this round, 0 if it declines
KEY_DECLINE_REASON = "decline_reason"
KEY_VERSION = "semiofed_version"
KEY_FEATURE_SHA = "feature_extractor_sha256"
FIT_METRICS = ("epsilon_round", "epsilon_spent", "epsilon_max", "delta", "noise_multiplier", "site_noise_multiplier",
               "sample_rate", "steps",
               "train_patients", "seconds")
# an evaluation releases one vector per site (common/federation/evaluation.py), never metrics of its patients
EVAL_METRICS = release_keys()
BUDGET_METRICS = ("epsilon_spent", "epsilon_max", "epsilon_remaining", "epsilon_projected", "delta")
# Strings a site may send, each checked by value by the egress policy.
TEXT_KEYS = (KEY_SITE_ID, KEY_LEDGER_HEAD, KEY_DECLINE_REASON, KEY_VERSION, KEY_FEATURE_SHA)
MAX_TEXT_BYTES = 1024


@dataclass(frozen=True)
class FederationConfig:
    """A federated run's settings; every site trains the same model with the same schedule."""

    rounds: int = 3
    strategy: str = STRATEGY_FEDAVG
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 0.05  # FedAdam's eta
    local_epochs: int = 5
    batch_patients: int = DEFAULT_SCHEDULE.batch_patients
    lr: float = DEFAULT_SCHEDULE.lr
    optimizer: str = DEFAULT_SCHEDULE.optimizer
    # the model spec, flat so that each is one Flower run-config key
    labels: tuple[str, ...] = DEFAULT_MODEL.labels
    streams: tuple[str, ...] = DEFAULT_MODEL.streams
    temporal: str = DEFAULT_MODEL.temporal
    hidden: int = DEFAULT_MODEL.hidden
    embed_dim: int = DEFAULT_MODEL.embed_dim
    n_segments: int = DEFAULT_MODEL.n_segments
    descriptors: tuple[str, ...] = DEFAULT_MODEL.descriptors
    stcnn: str = "i3d"
    stcnn_dim: int = 1024
    stcnn_input: str = STCNN_INPUT_PATIENT  # how the sites' STCNN saw the frames (records must agree)
    folds: int = 5  # sites hold out fold `test_fold` (test) and the next (validation) of their own patients
    test_fold: int = 0
    validation: bool = True  # False: no validation fold (temperature 1), every other patient trains
    seed: int = 0
    evaluate_every: int = 0  # evaluate the global model every k rounds and after the last; 0: after the last only
    secure_aggregation: bool = True
    dp_mode: str = DP_LOCAL
    min_sites: int = 2
    round_timeout: float = 900.0  # seconds a round waits for sites; a dropped site cannot hang it
    # the server may ask for less spending per run; a site caps it by its own policy and settings
    site_epsilon: float = 0.0  # 0: each site decides (its run budget, else what it has left)
    noise_multiplier: float = 0.0  # 0: each site chooses sigma to fit its run budget
    checkpoints_dir: str = ""
    # enrolled sites' public keys (NAME.pub): the coordinator verifies their ledger heads; with SITE_NODES_FILE beside
    # them, the Flower node each site's key was registered as
    site_keys_dir: str = ""
    resume_from: str = ""  # a global checkpoint to start from
    semiofed_version: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _tuple(self.labels))
        object.__setattr__(self, "streams", _tuple(self.streams))
        object.__setattr__(self, "descriptors", parse_descriptors(_tuple(self.descriptors)))
        if self.strategy not in STRATEGIES:
            raise SemiofedError(f"strategy '{self.strategy}' is unknown", f"use one of {', '.join(STRATEGIES)}")
        if self.optimizer not in OPTIMIZERS:
            raise SemiofedError(f"optimizer '{self.optimizer}' is unknown", f"use one of {', '.join(OPTIMIZERS)}")
        if self.temporal not in TEMPORAL_MODELS:
            raise SemiofedError(f"temporal model '{self.temporal}' is unknown", f"use one of {', '.join(TEMPORAL_MODELS)}")
        if self.stcnn_input not in STCNN_INPUTS:
            raise SemiofedError(f"STCNN input '{self.stcnn_input}' is unknown", f"use one of {', '.join(STCNN_INPUTS)}")
        if self.dp_mode not in DP_MODES:
            raise SemiofedError(f"DP mode '{self.dp_mode}' is unknown", f"use one of {', '.join(DP_MODES)}")
        if self.distributed and not (self.secure_aggregation and self.strategy == STRATEGY_FEDADAM):
            raise SemiofedError("distributed DP needs secure aggregation and the server's optimiser: the coordinator may "
                                "see only the sum of the sites' noisy gradients",
                                "run with --secure-aggregation --strategy fedadam, or --dp-mode local")
        for name in ("rounds", "local_epochs", "batch_patients", "min_sites", "n_segments", "hidden"):
            if int(getattr(self, name)) < 1:
                raise SemiofedError(f"run config {name}={getattr(self, name)} must be at least 1")
        for name in ("lr", "round_timeout", "server_lr"):
            if not (float(getattr(self, name)) > 0 and math.isfinite(float(getattr(self, name)))):
                raise SemiofedError(f"run config {name}={getattr(self, name)} must be a positive number")
        if self.evaluate_every < 0:
            raise SemiofedError(f"run config evaluate-every={self.evaluate_every} is negative", "use 0 (the last round only) or k >= 1")
        for name in ("proximal_mu", "site_epsilon", "noise_multiplier"):
            if float(getattr(self, name)) < 0:
                raise SemiofedError(f"run config {name}={getattr(self, name)} must not be negative")
        least = 3 if self.validation else 2
        if self.folds < least or not (0 <= self.test_fold < self.folds):
            raise SemiofedError(f"folds={self.folds}, test_fold={self.test_fold}",
                                f"use folds >= {least} and 0 <= test_fold < folds")
        self.model_spec  # the descriptor names are checked

    def evaluates(self, server_round: int) -> bool:
        """Whether the global model of `server_round` is evaluated at the sites."""
        return server_round == self.rounds or (self.evaluate_every > 0 and server_round % self.evaluate_every == 0)

    @property
    def evaluation_rounds(self) -> int:
        """How many rounds of the run are evaluated."""
        return sum(self.evaluates(r) for r in range(1, self.rounds + 1))

    @property
    def distributed(self) -> bool:
        """True for a distributed-DP run (see DP_DISTRIBUTED)."""
        return self.dp_mode == DP_DISTRIBUTED

    @property
    def model_spec(self) -> ModelSpec:
        """The model every site trains in this run."""
        return ModelSpec(labels=self.labels, streams=self.streams, temporal=self.temporal, hidden=self.hidden,
                         embed_dim=self.embed_dim, n_segments=self.n_segments,
                         descriptors=self.descriptors)

    def to_run_config(self) -> dict[str, Any]:
        """Flower run config (str, int, float, bool values; lists comma-joined)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key.replace("_", "-")] = ",".join(value) if isinstance(value, (list, tuple)) else value
        return out

    @classmethod
    def from_run_config(cls, raw: Mapping[str, Any]) -> "FederationConfig":
        """Parse Flower's run config, naming unknown keys; missing keys take the defaults."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        unknown = []
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name not in known:
                unknown.append(key)
                continue
            default = known[name].default
            if isinstance(default, tuple):
                values[name] = _tuple(value)
            elif isinstance(default, bool):
                values[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[name] = int(value)
            elif isinstance(default, float):
                values[name] = float(value)
            else:
                values[name] = str(value)
        if unknown:
            raise SemiofedError(f"run config has unknown keys {sorted(unknown)}", f"use only {sorted(k.replace('_', '-') for k in known)}")
        return cls(**values)


def _tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


__all__ = ["FederationConfig", "STRATEGIES", "DP_MODES", "DP_LOCAL", "DP_DISTRIBUTED", "FIT_METRICS", "EVAL_METRICS", "BUDGET_METRICS", "TEXT_KEYS"]
