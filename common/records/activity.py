"""When the patient moved: active windows of a record's motion descriptors, and the span of the movement.

A window is active when its whole-body motion energy (`body_energy` of
common/records/motion.py, fixed public scale) is above a threshold set between
the record's own quiet and busy levels (its QUIET_PERCENTILE and 90th
percentiles), so camera distance and the patient's build drop out. The span
runs from the first run of MIN_ACTIVE_S of active windows to the last active
window. A record whose movement never rises above its quiet level by
MIN_RANGE has no contrast: a clip cut inside the seizure, so the whole record
is the span.

Bilateral movement (the moment a seizure generalises) is the first run of
windows in which both arms' speeds rise and fall together (`arm_speed_sync`).

Only the record itself is read. Used for the seizure's evolution
(client/training/evolution.py) and to pool the seizure itself, not the video
around it, for the unusual-seizure check (common/learning/unusual.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiofed.common.records.motion import MOTION_FEATURE_NAMES, WINDOW_S, unscale_features, window_features
from semiofed.common.records.schema import SNIPPET_TIMES, SeizureRecord

QUIET_PERCENTILE = 5.0  # a seizure clip is mostly seizure: its quietest windows are the patient at rest
BUSY_PERCENTILE = 90.0
ACTIVE_SHARE = 0.35  # active above quiet + this share of (busy - quiet)
MIN_ACTIVE_S = 1.0  # the movement must last this long to count as the onset (two windows at the 0.5 s hop)
MIN_RANGE = 0.3  # busy - quiet below this (scaled log10 units: a factor of 2) is no contrast
TONIC_HOLD = -0.5  # scaled tonic_hold above this (raw 0.25: arms half out and barely moving) is tonic posture
# Also tonic: the stronger arm's movement peaks below this (Hz): a slow change of posture (the arms going into and
# holding the tonic position, with its fast low vibration), not clonic jerks (3-4 Hz slowing to 1 Hz). Chosen on
# the design cohort explain-lateral-dev (26 TCS; tonic snippets found, federated DP model: 0 of 210 by tonic_hold
# alone, 60 at 1.3 Hz, 61 at 1.5 Hz, 71 at 1.8 Hz, each for one clonic snippet lost).
TONIC_SLOW_HZ = 1.8
# Bilateral: the two arms' speeds correlate above this (Pearson r) for MIN_BILATERAL_S; a focal seizure's arms move
# apart (r about 0.1 on the design cohorts), a generalised seizure's together (about 0.7)
BILATERAL_SYNC = 0.45
MIN_BILATERAL_S = 1.0
# The seizure a classifier reads: the snippets of the movement span and this much either side (chosen on the design
# cohorts explain-dev-usual and the demo's seed 0 from 1, 2 and 4 s; the clips the models
# are trained on hold the seizure with 1-2 s before and after it), when at least MIN_SEIZURE_SNIPPETS remain
SPAN_MARGIN_S = 1.0
MIN_SEIZURE_SNIPPETS = 4
_ENERGY = MOTION_FEATURE_NAMES.index("body_energy")
_HOLD = MOTION_FEATURE_NAMES.index("tonic_hold")
_FREQ = MOTION_FEATURE_NAMES.index("arm_freq")
_SYNC = MOTION_FEATURE_NAMES.index("arm_speed_sync")


@dataclass(frozen=True)
class Activity:
    """A record's windows (descriptors, centres, validity), which are active, and the span of the movement."""

    features: np.ndarray  # [W, MOTION_DIM]
    centres: np.ndarray  # [W] seconds
    valid: np.ndarray  # [W] bool
    active: np.ndarray  # [W] bool
    hold: np.ndarray  # [W] bool: tonic posture (arms held out and still, or a slow change of posture)
    start_s: float | None  # None: no window with a tracked torso
    end_s: float | None
    contrast: bool  # False: no rise of movement anywhere (the span is the whole record)

    def bilateral_from(self) -> float | None:
        """Centre of the first window of the first run of MIN_BILATERAL_S of bilaterally synchronous arm movement
        from the start of the span on (half a window earlier: a window sees 1.5 s either side), or None."""
        if self.start_s is None or len(self.centres) < 2:
            return None
        hop = float(np.median(np.diff(self.centres)))
        need = max(1, int(round(MIN_BILATERAL_S / hop))) + 1
        ok = self.valid & (self.features[:, _SYNC] > BILATERAL_SYNC) & (self.centres >= self.start_s - WINDOW_S / 2)
        for i in range(len(ok) - need + 1):
            if ok[i : i + need].all():
                return float(self.centres[i])
        return None

    @property
    def in_span(self) -> np.ndarray:
        """[W] bool: the valid windows inside the span."""
        if self.start_s is None:
            return np.zeros(len(self.centres), dtype=bool)
        return self.valid & (self.centres >= self.start_s) & (self.centres <= self.end_s)


def record_activity(record: SeizureRecord) -> Activity:
    """The record's active windows and movement span."""
    feats, bounds, valid = window_features(record.arrays, frame_size=record.frame_size)
    centres = bounds.astype(np.float64).mean(axis=1)
    energy = feats[:, _ENERGY].astype(np.float64)
    active = np.zeros(len(centres), dtype=bool)
    contrast = False
    if valid.sum() >= 2:
        quiet, busy = np.percentile(energy[valid], [QUIET_PERCENTILE, BUSY_PERCENTILE])
        contrast = bool(busy - quiet >= MIN_RANGE)
        if contrast:
            active = valid & (energy > quiet + ACTIVE_SHARE * (busy - quiet))
    slow = unscale_features(feats)[:, _FREQ] < TONIC_SLOW_HZ  # a missing arm frequency reads as 3.5 Hz: not slow
    hold = valid & ((feats[:, _HOLD] > TONIC_HOLD) | slow)
    start = end = None
    if active.any():
        hop = float(np.median(np.diff(centres))) if len(centres) > 1 else WINDOW_S
        need = max(1, int(round(MIN_ACTIVE_S / hop)))
        for i in range(len(active) - need + 1):
            if active[i : i + need].all():
                start = float(centres[i])
                break
        if start is not None:
            end = float(centres[np.flatnonzero(active)[-1]])
    if start is None and valid.any():  # no contrast, or no sustained rise: the clip is inside the seizure
        start, end = float(centres[valid][0]), float(centres[valid][-1])
        contrast = False
    return Activity(features=feats, centres=centres, valid=valid, active=active, hold=hold, start_s=start, end_s=end,
                    contrast=contrast)


def seizure_snippets(record: SeizureRecord, activity: Activity | None = None) -> np.ndarray:
    """[S] bool: the snippets of the record's seizure, SPAN_MARGIN_S either side: within the clinician's seizure times
    when the record has them (a manifest's onset_s and offset_s, `predict --onset-s/--offset-s`), else within its
    movement span (every snippet when the span is unknown, or when either would leave fewer than
    MIN_SEIZURE_SNIPPETS). The clinician's times, when given, are the better reading of a long video: on the design
    cohort explain-dev-usual they raised the balanced accuracy of the demo's models from 0.85-0.88 to 0.88-0.94
    (docs/benchmarks.md, "Reading the seizure on the clinician's times")."""
    times = record.arrays[SNIPPET_TIMES].astype(np.float64)
    every = np.ones(times.shape[0], dtype=bool)
    mid = times.mean(axis=1)
    if record.onset_s is not None and record.offset_s is not None:
        within = (mid >= record.onset_s - SPAN_MARGIN_S) & (mid <= record.offset_s + SPAN_MARGIN_S)
        if within.sum() >= MIN_SEIZURE_SNIPPETS:
            return within
    activity = activity or record_activity(record)
    if activity.start_s is None or not activity.contrast:
        return every
    inside = (mid >= activity.start_s - SPAN_MARGIN_S) & (mid <= activity.end_s + SPAN_MARGIN_S)
    return inside if inside.sum() >= MIN_SEIZURE_SNIPPETS else every
