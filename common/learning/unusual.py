"""Unusual seizures: how far a seizure lies from the seizures a model was calibrated on.

A seizure is read as the motion descriptors of its windows (every descriptor
of common/records/motion.py, on their fixed public scale) over the seizure
itself (the valid windows of the movement span of common/records/activity.py),
so that the rest and recovery a video holds around a seizure do not dilute it.
The windows of the reference's seizures of each label (FOS, TCS) give a mean
and a covariance shrunk halfway to its diagonal; a window's distance is its
squared Mahalanobis distance per descriptor, and a seizure's distance from a
label is the mean over its windows. Its score is its distance from the label it
is closest to: a seizure must look like one kind of reference seizure as a
whole, not like the blend of all of them. Windows, not one pooled vector per
seizure: two dozen reference seizures hold some 750 windows, enough for
covariances of 32 descriptors, where their 24 pooled vectors could not fill
that of 65 numbers (measured on held-out cohorts with semiologies no model has
seen: docs/benchmarks.md, "The unusual-seizure score: windows against pooled
seizures"). The score is calibrated on the reference itself, leave one seizure
out: the flag goes up above the 95th percentile of the reference's own scores
(about one usual seizure in twenty flagged), and the tail share says how many
reference seizures lie further out.

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
from semiofed.common.records.motion import MOTION_FEATURE_NAMES
from semiofed.common.records.schema import SeizureRecord

UNUSUAL_VERSION = 4  # 4: per label; 3: the windows of the movement span; 2: one pooled vector; 1: the whole video
SHRINKAGE = 0.5  # covariance weight moved to its diagonal
VARIANCE_FLOOR = 1e-2  # on the [-3, 3] descriptor scale: a descriptor constant over the reference is not infinitely telling
FLAG_QUANTILE = 95.0
MIN_REFERENCE = 8
MIN_PER_LABEL = 4  # a label's window distribution needs a few seizures of it; with fewer, one over all labels
ALL_LABELS = "all"


def seizure_windows(record: SeizureRecord, activity: Activity | None = None) -> np.ndarray:
    """[W, MOTION_DIM] the descriptors of the record's valid windows in its movement span (all valid windows when
    no span stands out); no rows when no window had a tracked torso."""
    activity = activity or record_activity(record)
    inside = activity.in_span if activity.in_span.any() else activity.valid
    return activity.features[inside & activity.valid].astype(np.float64)


NO_MOVEMENT = {"score": None, "tail": None, "flag": True,
               "note": "no movement could be measured (no pose in any window): review the video"}


def movement_measured(windows: np.ndarray) -> bool:
    """Whether any window of the record had a tracked torso."""
    return bool(len(windows))


@dataclass(frozen=True)
class UnusualModel:
    """The reference distribution of windows, one per label, and the calibrated flag threshold."""

    labels: tuple[str, ...]  # the reference's labels, one window distribution each
    means: np.ndarray  # [K, D]
    precisions: np.ndarray  # [K, D, D]
    reference_scores: np.ndarray  # [N] sorted leave-one-seizure-out scores of the reference seizures
    threshold: float

    def score(self, windows: np.ndarray) -> float:
        """The seizure's distance from the label it is closest to: the least, over the reference's labels, of the
        mean over its windows [W, D] of their squared Mahalanobis distance per descriptor."""
        w = np.asarray(windows, dtype=np.float64)
        return min(_mean_distance(w, mean, precision) for mean, precision in zip(self.means, self.precisions))

    def tail(self, score: float) -> float:
        """Share of the reference seizures that score at least as high (small: unusual)."""
        n = len(self.reference_scores)
        return float((n - np.searchsorted(self.reference_scores, score, side="left") + 1) / (n + 1))

    def assess(self, record: SeizureRecord) -> dict[str, Any]:
        """{score, tail, threshold, flag} for one record; a record with no measurable movement is flagged for review
        with score None (nothing to compare: it must not be classified silently)."""
        return self.assess_windows(seizure_windows(record))

    def assess_windows(self, windows: np.ndarray) -> dict[str, Any]:
        """`assess` of a record's `seizure_windows`."""
        if not movement_measured(windows):
            return NO_MOVEMENT | {"threshold": round(self.threshold, 4)}
        s = self.score(windows)
        return {"score": round(s, 4), "tail": round(self.tail(s), 4), "threshold": round(self.threshold, 4),
                "flag": bool(s > self.threshold)}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (stored in a checkpoint's meta)."""
        return {"version": UNUSUAL_VERSION, "embedding": list(MOTION_FEATURE_NAMES), "labels": list(self.labels),
                "means": self.means.tolist(), "precisions": self.precisions.tolist(),
                "reference_scores": self.reference_scores.tolist(), "threshold": self.threshold}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "UnusualModel":
        """Parse the stored form, or say that it is not this version's."""
        if raw.get("version") != UNUSUAL_VERSION or list(raw.get("embedding", [])) != list(MOTION_FEATURE_NAMES):
            raise SemiofedError("the checkpoint's unusual-seizure reference was made by another semiofed version",
                                "re-calibrate the model on the public reference seizures")
        return cls(labels=tuple(raw["labels"]), means=np.asarray(raw["means"], dtype=np.float64),
                   precisions=np.asarray(raw["precisions"], dtype=np.float64),
                   reference_scores=np.asarray(raw["reference_scores"], dtype=np.float64), threshold=float(raw["threshold"]))


def _fit_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
    cov = np.atleast_2d(cov)
    shrunk = (1.0 - SHRINKAGE) * cov + SHRINKAGE * np.diag(np.diag(cov))
    shrunk += VARIANCE_FLOOR * np.eye(len(mean))
    return mean, np.linalg.inv(shrunk)


def _mean_distance(windows: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
    z = windows - mean
    return float(np.einsum("ij,jk,ik->i", z, precision, z).mean()) / len(mean)


def fit_unusual(seizures: Sequence[np.ndarray], labels: Sequence[str] | None = None) -> UnusualModel:
    """The reference distribution of these seizures' windows (each [W_i, D]; `seizure_windows`), one per label
    (`labels`, one per seizure; None, or a label with fewer than MIN_PER_LABEL seizures: one distribution over
    all), with its leave-one-seizure-out calibrated threshold. Seizures without a window are left out."""
    labels = [ALL_LABELS] * len(seizures) if labels is None else list(labels)
    if len(labels) != len(seizures):
        raise ValueError(f"{len(seizures)} seizures but {len(labels)} labels")
    kept = [(np.asarray(w, dtype=np.float64), label) for w, label in zip(seizures, labels) if len(w)]
    if len(kept) < MIN_REFERENCE:
        raise SemiofedError(f"{len(kept)} reference seizures with a measurable movement are too few for the "
                            "unusual-seizure reference", f"give at least {MIN_REFERENCE} public reference seizures")
    widths = {w.shape[1] for w, _ in kept}
    if len(widths) != 1:
        raise SemiofedError(f"the reference seizures' windows have {sorted(widths)} descriptors",
                            "prepare every reference seizure with this semiofed version")
    if any(sum(label == n for _, label in kept) < MIN_PER_LABEL for n in {label for _, label in kept}):
        kept = [(w, ALL_LABELS) for w, _ in kept]  # a label with too few seizures: one distribution over them all
    names = tuple(sorted({label for _, label in kept}))
    by_label = {n: [w for w, label in kept if label == n] for n in names}
    moments = {n: _fit_moments(np.concatenate(ws)) for n, ws in by_label.items()}
    loo = []
    for n, ws in by_label.items():
        others = [m for k, m in moments.items() if k != n]
        for i in range(len(ws)):  # the seizure's own label refitted without it; the other labels as they are
            own = _fit_moments(np.concatenate(ws[:i] + ws[i + 1:]))
            loo.append(min(_mean_distance(ws[i], mean, precision) for mean, precision in [own, *others]))
    scores = np.sort(np.asarray(loo))
    return UnusualModel(labels=names, means=np.stack([moments[n][0] for n in names]),
                        precisions=np.stack([moments[n][1] for n in names]), reference_scores=scores,
                        threshold=float(np.percentile(scores, FLAG_QUANTILE)))


def fit_unusual_on_records(records: Sequence[SeizureRecord]) -> UnusualModel:
    """`fit_unusual` on the windows of these (public reference) records, one distribution per label."""
    return fit_unusual([seizure_windows(r) for r in records], [r.label for r in records])
