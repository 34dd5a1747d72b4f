"""Unusual seizures: how far a seizure lies from the seizures a model was calibrated on.

The embedding of a seizure is its pooled motion descriptors (mean and 90th
percentile of every descriptor of common/records/motion.py, and the valid
share: `pool_seizure`), on their fixed public scale, over the windows of the
seizure itself (the movement span of common/records/activity.py), so that the
rest and recovery a video holds around a seizure do not dilute it. A reference
set of seizures gives a mean and a covariance shrunk halfway to its diagonal
(a few dozen seizures cannot fill a full covariance); a seizure's score is its
squared Mahalanobis distance per dimension. The score is calibrated on the
reference itself, leave-one-out: the flag goes up above the 95th percentile of
the reference's own scores (about one usual seizure in twenty flagged), and the
tail share says how many reference seizures lie further out.

Privacy: fitted on the PUBLIC reference seizures that already set every model's
decision threshold (phantom seizures run through `site prepare`,
common/learning/calibration.py), so it is post-processing and costs no budget.
It is stored in the checkpoint next to the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.common.records.activity import Activity, record_activity
from semiofed.common.records.motion import POOLED_DIM, POOLED_FEATURE_NAMES, pool_seizure
from semiofed.common.records.schema import SeizureRecord

UNUSUAL_VERSION = 2  # 2: pooled over the movement span (1: the whole video)
SHRINKAGE = 0.5  # covariance weight moved to its diagonal
VARIANCE_FLOOR = 1e-2  # on the [-3, 3] descriptor scale: a descriptor constant over the reference is not infinitely telling
FLAG_QUANTILE = 95.0
MIN_REFERENCE = 8
# Fewer reference seizures than the embedding has numbers leave the covariance mostly to the shrinkage, and unseen
# semiologies are told apart less well (docs/benchmarks.md, "The unusual-seizure reference: how many seizures").
RECOMMENDED_REFERENCE = POOLED_DIM


def seizure_embedding(record: SeizureRecord, activity: Activity | None = None) -> np.ndarray:
    """[POOLED_DIM] the record's motion descriptors pooled over its movement span (`pool_seizure`); the valid share
    is that of the whole record (-1: no window with a tracked torso)."""
    activity = activity or record_activity(record)
    pooled = pool_seizure(activity.features, activity.in_span if activity.in_span.any() else activity.valid)
    pooled[-1] = 2.0 * activity.valid.mean() - 1.0 if activity.valid.size else -1.0
    return pooled.astype(np.float64)


NO_MOVEMENT = {"score": None, "tail": None, "flag": True,
               "note": "no movement could be measured (no pose in any window): review the video"}


def movement_measured(embedding: np.ndarray) -> bool:
    """Whether any window of the record had a tracked torso (the embedding's valid share above its floor)."""
    return bool(embedding[-1] > -1.0)


@dataclass(frozen=True)
class UnusualModel:
    """The reference distribution and the calibrated flag threshold."""

    mean: np.ndarray  # [D]
    precision: np.ndarray  # [D, D]
    reference_scores: np.ndarray  # [N] sorted leave-one-out scores of the reference seizures
    threshold: float

    def score(self, embedding: np.ndarray) -> float:
        """Squared Mahalanobis distance per dimension from the reference mean."""
        z = np.asarray(embedding, dtype=np.float64) - self.mean
        return float(z @ self.precision @ z) / len(self.mean)

    def tail(self, score: float) -> float:
        """Share of the reference seizures that score at least as high (small: unusual)."""
        n = len(self.reference_scores)
        return float((n - np.searchsorted(self.reference_scores, score, side="left") + 1) / (n + 1))

    def assess(self, record: SeizureRecord) -> dict[str, Any]:
        """{score, tail, threshold, flag} for one record; a record with no measurable movement is flagged for review
        with score None (nothing to compare: it must not be classified silently)."""
        return self.assess_embedding(seizure_embedding(record))

    def assess_embedding(self, embedding: np.ndarray) -> dict[str, Any]:
        """`assess` of a record's `seizure_embedding`."""
        if not movement_measured(embedding):
            return NO_MOVEMENT | {"threshold": round(self.threshold, 4)}
        s = self.score(embedding)
        return {"score": round(s, 4), "tail": round(self.tail(s), 4), "threshold": round(self.threshold, 4),
                "flag": bool(s > self.threshold)}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (stored in a checkpoint's meta)."""
        return {"version": UNUSUAL_VERSION, "embedding": list(POOLED_FEATURE_NAMES), "mean": self.mean.tolist(),
                "precision": self.precision.tolist(), "reference_scores": self.reference_scores.tolist(),
                "threshold": self.threshold}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "UnusualModel":
        """Parse the stored form, or say that it is not this version's."""
        if raw.get("version") != UNUSUAL_VERSION or list(raw.get("embedding", [])) != list(POOLED_FEATURE_NAMES):
            raise SemiofedError("the checkpoint's unusual-seizure reference was made by another semiofed version",
                                "re-calibrate the model on the public reference seizures")
        return cls(mean=np.asarray(raw["mean"], dtype=np.float64), precision=np.asarray(raw["precision"], dtype=np.float64),
                   reference_scores=np.asarray(raw["reference_scores"], dtype=np.float64), threshold=float(raw["threshold"]))


def reference_size_note(seizures: int) -> str | None:
    """A one-line warning when a reference of this many seizures is smaller than recommended, else None."""
    if seizures >= RECOMMENDED_REFERENCE:
        return None
    return (f"the unusual-seizure reference has {seizures} seizures for {POOLED_DIM} numbers per seizure: unseen "
            f"semiologies are flagged less reliably; give at least {RECOMMENDED_REFERENCE} public reference seizures")


def _fit_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
    cov = np.atleast_2d(cov)
    shrunk = (1.0 - SHRINKAGE) * cov + SHRINKAGE * np.diag(np.diag(cov))
    shrunk += VARIANCE_FLOOR * np.eye(len(mean))
    return mean, np.linalg.inv(shrunk)


def fit_unusual(embeddings: Sequence[np.ndarray]) -> UnusualModel:
    """The reference distribution of these seizure embeddings, with its leave-one-out calibrated threshold."""
    x = np.asarray(list(embeddings), dtype=np.float64)
    if x.ndim != 2 or len(x) < MIN_REFERENCE:
        raise SemiofedError(f"{len(x)} reference seizures are too few for the unusual-seizure reference",
                            f"give at least {MIN_REFERENCE} public reference seizures")
    loo = []
    for i in range(len(x)):
        mean, precision = _fit_moments(np.delete(x, i, axis=0))
        z = x[i] - mean
        loo.append(float(z @ precision @ z) / x.shape[1])
    mean, precision = _fit_moments(x)
    scores = np.sort(np.asarray(loo))
    return UnusualModel(mean=mean, precision=precision, reference_scores=scores,
                        threshold=float(np.percentile(scores, FLAG_QUANTILE)))


def fit_unusual_on_records(records: Sequence[SeizureRecord]) -> UnusualModel:
    """`fit_unusual` on the embeddings of these (public reference) records."""
    return fit_unusual([seizure_embedding(r) for r in records])
