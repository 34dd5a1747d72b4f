"""How a seizure evolved: onset, phase per snippet, and the moment of bilateral generalisation.

Two sources, each used for what it knows:
- The classifier's per-snippet probabilities (causal GRU: each snippet has seen
  the seizure so far) give the generalisation moment: the start of the first
  run of MIN_RUN_SNIPPETS snippets with P(TCS) >= 1/2, when the seizure is
  called TCS (client/training/predict.py).
- The record's own motion descriptors (common/records/motion.py, fixed public
  scale) give when the patient moved: a window is active when its whole-body
  motion energy is above a threshold set between the record's own quiet and
  busy levels (its 5th and 90th percentiles), so camera distance and the
  patient's build drop out. Onset is the first run of active windows, offset
  the last active window. After generalisation a window is tonic while the
  arms are held out and still (the `tonic_hold` descriptor) and clonic
  otherwise; after the offset of a generalised seizure the patient is
  postictal.

Phases, in the order a clinician reads them: interictal (before onset, or after
a focal seizure), focal (from onset until generalisation or offset), tonic,
clonic, postictal. Nothing is fitted on any patient: the thresholds are fixed
shares of the record's own range, chosen on the design cohorts (the demo's
seed-0 sites and the public reference, never a test cohort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiofed.common.records.motion import MOTION_FEATURE_NAMES, WINDOW_S, window_features
from semiofed.common.records.schema import SNIPPET_TIMES, SeizureRecord

INTERICTAL, FOCAL, TONIC, CLONIC, POSTICTAL = "interictal", "focal", "tonic", "clonic", "postictal"
PHASES = (INTERICTAL, FOCAL, TONIC, CLONIC, POSTICTAL)
ACTIVE_SHARE = 0.35  # a window is active above quiet + this share of (busy - quiet)
MIN_ACTIVE_S = 1.0  # onset needs activity for this long (two windows at the 0.5 s hop)
QUIET_PERCENTILE = 5.0  # the record's quiet level: a seizure clip is mostly seizure, so its quietest windows
NO_CONTRAST_IS_ICTAL = True
MIN_RANGE = 0.3  # busy - quiet below this (scaled log10 units: a factor of 2) is no seizure movement at all
TONIC_HOLD = -0.5  # scaled tonic_hold above this (raw 0.25: arms half out and barely moving) is tonic
_ENERGY = MOTION_FEATURE_NAMES.index("body_energy")
_HOLD = MOTION_FEATURE_NAMES.index("tonic_hold")


@dataclass(frozen=True)
class Evolution:
    """Per-snippet phases with onset, offset and generalisation times (seconds from the video start)."""

    times: np.ndarray  # [S] snippet mid-times
    phases: tuple[str, ...]  # [S] one of PHASES
    onset_s: float | None
    offset_s: float | None
    generalisation_s: float | None

    def segments(self) -> list[dict[str, object]]:
        """Runs of one phase: [{phase, start_s, end_s}] (end: the next run's first snippet, or the last snippet)."""
        out: list[dict[str, object]] = []
        for i, phase in enumerate(self.phases):
            if out and out[-1]["phase"] == phase:
                out[-1]["end_s"] = float(self.times[i])
                continue
            if out:
                out[-1]["end_s"] = float(self.times[i])
            out.append({"phase": phase, "start_s": float(self.times[i]), "end_s": float(self.times[i])})
        return out

    def to_json(self) -> dict[str, object]:
        """JSON-ready values."""
        r = lambda v: None if v is None else round(float(v), 2)  # noqa: E731
        return {"onset_s": r(self.onset_s), "offset_s": r(self.offset_s), "generalization_s": r(self.generalisation_s),
                "segments": [{**s, "start_s": r(s["start_s"]), "end_s": r(s["end_s"])} for s in self.segments()]}


def activity(record: SeizureRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window centres [W], active [W] bool, tonic hold [W] bool) from the record's motion descriptors."""
    feats, bounds, valid = window_features(record.arrays, frame_size=record.frame_size)
    centres = bounds.astype(np.float64).mean(axis=1)
    energy = feats[:, _ENERGY].astype(np.float64)
    active = np.zeros(len(centres), dtype=bool)
    if valid.sum() >= 2:
        quiet, busy = np.percentile(energy[valid], [QUIET_PERCENTILE, 90.0])
        if busy - quiet >= MIN_RANGE:
            active = valid & (energy > quiet + ACTIVE_SHARE * (busy - quiet))
    hold = valid & (feats[:, _HOLD] > TONIC_HOLD)
    return centres, active, hold


def estimate_evolution(record: SeizureRecord, generalisation_s: float | None, *, hop_s: float | None = None) -> Evolution:
    """Phases of every snippet of `record`, given the classifier's generalisation time (None: not generalised)."""
    times = record.arrays[SNIPPET_TIMES].astype(np.float64).mean(axis=1)
    centres, active, hold = activity(record)
    onset = offset = None
    if active.any():
        hop = hop_s or (float(np.median(np.diff(centres))) if len(centres) > 1 else WINDOW_S)
        need = max(1, int(round(MIN_ACTIVE_S / hop)))
        for i in range(len(active) - need + 1):
            if active[i : i + need].all():
                onset = float(centres[i])
                break
        if onset is not None:
            offset = float(centres[np.flatnonzero(active)[-1]])
    if onset is None and NO_CONTRAST_IS_ICTAL and len(centres):
        # no rise in movement anywhere: the clip was cut inside the seizure (as clinicians cut them)
        onset, offset = float(times[0]), float(times[-1])
    if generalisation_s is not None and onset is not None:
        onset = min(onset, generalisation_s)
    if generalisation_s is not None and offset is not None:
        offset = max(offset, generalisation_s)
    nearest = np.abs(times[:, None] - centres[None, :]).argmin(axis=1) if len(centres) else np.zeros(len(times), int)
    phases = []
    for t, w in zip(times, nearest):
        if onset is None or t < onset:
            phases.append(INTERICTAL)
        elif offset is not None and t > offset:
            phases.append(POSTICTAL if generalisation_s is not None else INTERICTAL)
        elif generalisation_s is not None and t >= generalisation_s:
            phases.append(TONIC if len(centres) and hold[w] else CLONIC)
        else:
            phases.append(FOCAL)
    return Evolution(times=times, phases=tuple(phases), onset_s=onset, offset_s=offset, generalisation_s=generalisation_s)


def truth_phases(times: np.ndarray, truth: dict) -> list[str]:
    """The phantom's ground truth (`truth/*.json`) as PHASES at these times."""
    onset, offset, general = truth["onset_s"], truth["offset_s"], truth.get("generalization_s")
    spans = {p["name"]: (p["start_s"], p["end_s"]) for p in truth.get("phases", []) if p["name"] in (TONIC, CLONIC)}
    out = []
    for t in np.asarray(times, dtype=np.float64):
        if t < onset:
            out.append(INTERICTAL)
        elif t >= offset:
            out.append(POSTICTAL if general is not None else INTERICTAL)
        elif general is not None and t >= general:
            out.append(next((name for name, (a, b) in spans.items() if a <= t < b), CLONIC))
        else:
            out.append(FOCAL)
    return out
