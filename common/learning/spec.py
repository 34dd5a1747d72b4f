"""The model spec: the classifier's shape that a run config, local training, the classifier and the CLI all derive from.

Importable without torch (the run config and the CLI read it before any model
exists). The STCNN feature width is not part of the spec: it follows from the
records' feature extractor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from semiofed.common.constants import DEFAULT_LABELS, STREAM_KEYPOINTS, STREAM_SIDE, TEMPORAL_LINEAR, TEMPORAL_MODELS
from semiofed.common.errors import SemiofedError
from semiofed.common.records.motion import MOTION_FEATURE_NAMES, SEMIOLOGY_DESCRIPTORS, check_descriptors

DESCRIPTORS_ALL = "all"


def parse_descriptors(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """`--descriptors` as given: 'all' (every motion descriptor), or comma-separated names."""
    if value is None:
        return SEMIOLOGY_DESCRIPTORS
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    names = tuple(value)
    return MOTION_FEATURE_NAMES if names in ((), (DESCRIPTORS_ALL,)) else names


@dataclass(frozen=True)
class ModelSpec:
    """Labels, input streams and temporal model of the seizure classifier, with its sizes."""

    labels: tuple[str, ...] = DEFAULT_LABELS
    # The motion descriptors only: 1024-d STCNN features would make the model ~20x larger than patient-level DP
    # affords at a hospital's cohort size, and they encode the scene more than the movement (docs/privacy.md).
    # plus the side stream, which only the side output reads (7 weights: the side of the focal signs, learnt where
    # the clinical labels give it; docs/benchmarks.md, "What side labels would allow")
    streams: tuple[str, ...] = (STREAM_KEYPOINTS, STREAM_SIDE)
    # A linear head on each window's descriptors, its window logits averaged (24 parameters): the noise on the mean
    # gradient grows with sqrt(parameters). Under federated local DP at epsilon 4 it scored 0.72-0.78 balanced
    # accuracy where the 4-unit GRU (214 parameters) scored 0.61-0.63, level with it without DP, on two held-out
    # cohorts and untuned seeds (docs/benchmarks.md, "The linear model under federated local DP"); GESTURES'
    # BLSTM with 64 units, ~200k parameters, stays at chance under DP. `--temporal gru` trains the GRU.
    temporal: str = TEMPORAL_LINEAR
    hidden: int = 4  # the recurrent models' width (--temporal gru, blstm, ...); the linear head has none
    embed_dim: int = 0  # per-stream linear embedding before fusion; 0 feeds the descriptors themselves
    # the motion descriptors of the keypoint stream the model reads (common/records/motion.py); the bilateral-vs-focal
    # ten by default: with all 32 the model is twice as large and did worse under DP (docs/privacy.md)
    descriptors: tuple[str, ...] = SEMIOLOGY_DESCRIPTORS
    n_segments: int = 16  # GESTURES: 16 segments per seizure

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "streams", tuple(self.streams))
        object.__setattr__(self, "descriptors", check_descriptors(parse_descriptors(self.descriptors)))
        if self.temporal not in TEMPORAL_MODELS:
            raise SemiofedError(f"temporal model '{self.temporal}' is unknown", f"use one of {', '.join(TEMPORAL_MODELS)}")
        for name in ("hidden", "n_segments"):
            if int(getattr(self, name)) < 1:
                raise SemiofedError(f"model {name}={getattr(self, name)} must be at least 1")
        if self.embed_dim < 0:
            raise SemiofedError(f"model embed_dim={self.embed_dim} must not be negative")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        d = asdict(self)
        d["labels"], d["streams"], d["descriptors"] = list(self.labels), list(self.streams), list(self.descriptors)
        return d


@dataclass(frozen=True)
class Schedule:
    """How long and how hard a site trains: docs/privacy.md's rule ("Training defaults")."""

    # every patient in every step up to this many (q = 1 at most hospitals: no sampling to keep secret,
    # and the least noise per unit of epsilon at these cohort sizes); larger sites sample Poisson batches of it
    batch_patients: int = 32
    epochs: int = 20  # at q = 1, 20 noisy steps: enough for a ~500-parameter model, few enough to keep sigma low
    optimizer: str = "adam"  # SGD with momentum did worse under DP in the recipe study (docs/privacy.md)
    lr: float = 0.05  # the descriptors are on a fixed [-3, 3] scale


# The defaults every entry point starts from (CLI options, run config, local training, classifier).
DEFAULT_MODEL = ModelSpec()
DEFAULT_SCHEDULE = Schedule()

__all__ = ["ModelSpec", "Schedule", "DEFAULT_MODEL", "DEFAULT_SCHEDULE", "DESCRIPTORS_ALL", "parse_descriptors"]
