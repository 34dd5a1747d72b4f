"""Unusual seizures: how far a seizure lies from the seizures a model was calibrated on.

A seizure is read as the motion descriptors of its windows (common/records/motion.py, on their fixed public scale)
over the seizure itself: the windows within the clinician's seizure times when the record has them (a manifest's
onset_s and offset_s), else the windows of its movement span (common/records/activity.py; a video given to
`predict` has no times), so that the rest and recovery a video holds around a seizure do not dilute it. The
descriptors are those of how the patient moves; the three that say how well the camera saw the patient (the pose
rate, and the arms' and legs' visibility) are left out: a night camera or a blanket is not a seizure. The windows
of the reference's seizures of each label (FOS, TCS), read on their movement span, give a mean and a covariance
shrunk halfway to its diagonal; a window's distance is its squared Mahalanobis distance per descriptor, and a
seizure's distance from a label is the mean over its windows. Its score is its distance from the label it is
closest to: a seizure must look like one kind of reference seizure as a whole, not like the blend of all of them.
The descriptors with the largest shares of that distance say what is unusual about it.

Each choice was measured on cohorts with semiologies no model has seen (docs/benchmarks.md, "The unusual-seizure
score"): windows rather than one pooled vector per seizure, and one distribution per label, on the design cohort
explain-unusual-dev; the camera's descriptors left out and the clinician's times on six cohorts against five public
references (mean AUROC 0.872 -> 0.891 -> 0.925; the reference on its movement span, which holds each known seizure
with the margins of its rise and fall: read on its times too, 0.907); then 0.94 on three cohorts scored once. The
score is calibrated on the reference itself, leave one seizure out: the flag goes up above the 95th percentile of the
reference's own scores (about one usual seizure in twenty flagged), and the tail share says how many reference
seizures lie further out.

Privacy: fitted on the PUBLIC reference seizures that already set every model's decision threshold (phantom
seizures run through `site prepare`, common/learning/calibration.py), so it is post-processing and costs no budget.
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

# 5: the clinician's times, without the camera's descriptors; 4: per label; 3: the windows of the movement span;
# 2: one pooled vector; 1: the whole video
UNUSUAL_VERSION = 5
SHRINKAGE = 0.5  # covariance weight moved to its diagonal
VARIANCE_FLOOR = 1e-2  # on the [-3, 3] descriptor scale: a descriptor constant over the reference is not infinitely telling
FLAG_QUANTILE = 95.0
MIN_REFERENCE = 8
MIN_PER_LABEL = 4  # a label's window distribution needs a few seizures of it; with fewer, one over all labels
ALL_LABELS = "all"
# How well the camera saw the patient, not how the patient moved: left out of the score
CAMERA_DESCRIPTORS = ("pose_rate", "arm_visibility", "leg_visibility")
UNUSUAL_DESCRIPTORS = tuple(n for n in MOTION_FEATURE_NAMES if n not in CAMERA_DESCRIPTORS)
_COLUMNS = np.array([MOTION_FEATURE_NAMES.index(n) for n in UNUSUAL_DESCRIPTORS])
READ_ON_TIMES = "seizure times"  # the clinician's onset and offset
READ_ON_SPAN = "movement span"
SHOWN_DESCRIPTORS = 3  # the descriptors with the largest shares of the distance, in a check's output


def seizure_windows(record: SeizureRecord, activity: Activity | None = None, *, times: bool = True) -> np.ndarray:
    """[W, len(UNUSUAL_DESCRIPTORS)] the descriptors of the record's valid windows within its seizure times (when
    `times` and the record has them and a valid window lies within them), else within its movement span (all valid
    windows when no span stands out); no rows when no window had a tracked torso."""
    return seizure_reading(record, activity, times=times)[0]


def seizure_reading(record: SeizureRecord, activity: Activity | None = None, *,
                    times: bool = True) -> tuple[np.ndarray, str]:
    """`seizure_windows`, and what they were read on: READ_ON_TIMES or READ_ON_SPAN."""
    activity = activity or record_activity(record)
    if times and record.onset_s is not None and record.offset_s is not None:
        within = activity.valid & (activity.centres >= record.onset_s) & (activity.centres <= record.offset_s)
        if within.any():
            return activity.features[within][:, _COLUMNS].astype(np.float64), READ_ON_TIMES
    inside = activity.in_span if activity.in_span.any() else activity.valid
    return activity.features[inside & activity.valid][:, _COLUMNS].astype(np.float64), READ_ON_SPAN


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
        return float(self._shares(windows).sum())

    def _shares(self, windows: np.ndarray) -> np.ndarray:
        """[D] each descriptor's part of the seizure's distance from its closest label (they sum to the score)."""
        w = np.asarray(windows, dtype=np.float64)
        parts = [_descriptor_shares(w, mean, precision) for mean, precision in zip(self.means, self.precisions)]
        return min(parts, key=lambda p: float(p.sum()))

    def tail(self, score: float) -> float:
        """Share of the reference seizures that score at least as high (small: unusual)."""
        n = len(self.reference_scores)
        return float((n - np.searchsorted(self.reference_scores, score, side="left") + 1) / (n + 1))

    def assess(self, record: SeizureRecord) -> dict[str, Any]:
        """{score, tail, threshold, flag, read_on, descriptors} for one record; a record with no measurable movement
        is flagged for review with score None (nothing to compare: it must not be classified silently)."""
        return self.assess_windows(*seizure_reading(record))

    def assess_windows(self, windows: np.ndarray, read_on: str | None = None) -> dict[str, Any]:
        """`assess` of a record's `seizure_windows` (read on `read_on`). `descriptors`: the SHOWN_DESCRIPTORS with
        the largest shares of the distance, each {name, share}: what is most unlike the reference."""
        if not movement_measured(windows):
            return NO_MOVEMENT | {"threshold": round(self.threshold, 4)}
        shares = self._shares(windows)
        s = float(shares.sum())
        top = np.argsort(-shares)[:SHOWN_DESCRIPTORS]
        return {"score": round(s, 4), "tail": round(self.tail(s), 4), "threshold": round(self.threshold, 4),
                "flag": bool(s > self.threshold), "read_on": read_on,
                "descriptors": [{"name": UNUSUAL_DESCRIPTORS[i], "share": round(float(shares[i] / max(s, 1e-12)), 3)}
                                for i in top]}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (stored in a checkpoint's meta)."""
        return {"version": UNUSUAL_VERSION, "embedding": list(UNUSUAL_DESCRIPTORS), "labels": list(self.labels),
                "means": self.means.tolist(), "precisions": self.precisions.tolist(),
                "reference_scores": self.reference_scores.tolist(), "threshold": self.threshold}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "UnusualModel":
        """Parse the stored form, or say that it is not this version's."""
        if raw.get("version") != UNUSUAL_VERSION or list(raw.get("embedding", [])) != list(UNUSUAL_DESCRIPTORS):
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


def _descriptor_shares(windows: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """[D] the mean over windows of z_j (P z)_j / D, z a window less the label's mean, P its precision: each
    descriptor's exact part of the mean squared Mahalanobis distance per descriptor."""
    z = windows - mean
    return (z * (z @ precision)).mean(axis=0) / len(mean)


def _mean_distance(windows: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
    return float(_descriptor_shares(windows, mean, precision).sum())


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
    if widths != {len(UNUSUAL_DESCRIPTORS)}:
        raise SemiofedError(f"the reference seizures' windows have {sorted(widths)} descriptors, not the "
                            f"{len(UNUSUAL_DESCRIPTORS)} of UNUSUAL_DESCRIPTORS", "read them with `seizure_windows`")
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
    """`fit_unusual` on the windows of these (public reference) records, one distribution per label, each read on
    its movement span (see the module's note)."""
    return fit_unusual([seizure_windows(r, times=False) for r in records], [r.label for r in records])
