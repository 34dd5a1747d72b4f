"""The model spec: the classifier's shape that a run config, local training, the classifier and the CLI all derive from.

Importable without torch (the run config and the CLI read it before any model
exists). The STCNN feature width is not part of the spec: it follows from the
records' feature extractor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from semiofed.common.constants import DEFAULT_LABELS, STREAMS, TEMPORAL_BLSTM, TEMPORAL_MODELS
from semiofed.common.errors import SemiofedError


@dataclass(frozen=True)
class ModelSpec:
    """Labels, input streams and temporal model of the seizure classifier, with its sizes."""

    labels: tuple[str, ...] = DEFAULT_LABELS
    streams: tuple[str, ...] = STREAMS
    temporal: str = TEMPORAL_BLSTM
    hidden: int = 64  # GESTURES: BLSTM with 64 hidden units
    embed_dim: int = 64  # per-stream linear embedding before fusion; 0 feeds the raw features
    n_segments: int = 16  # GESTURES: 16 segments per seizure

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "streams", tuple(self.streams))
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
        d["labels"], d["streams"] = list(self.labels), list(self.streams)
        return d


# The defaults every entry point starts from (CLI options, run config, local training, classifier).
DEFAULT_MODEL = ModelSpec()

__all__ = ["ModelSpec", "DEFAULT_MODEL"]
