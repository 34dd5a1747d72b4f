"""How a seizure evolved: onset, phase per snippet, and the moment of bilateral generalisation.

Two sources, each used for what it knows:
- The classifier says whether the seizure generalised (it is called TCS).
- The record's own motion descriptors say when (common/records/activity.py):
  onset is the start of the movement span, offset its end, and the moment of
  generalisation the first run of bilaterally synchronous arm movement; when
  there is none, the classifier's own estimate (the first run of snippets
  with P(TCS) >= 1/2, client/training/predict.py) stands in.
- After generalisation a window is tonic while the arms are held out and
  still (the `tonic_hold` descriptor) or their movement is a slow change of
  posture rather than jerks (`arm_freq` below TONIC_SLOW_HZ,
  common/records/activity.py), and clonic otherwise, in that order (no tonic
  once the clonic phase has begun); after the offset of a generalised
  seizure the patient is postictal.

Phases, in the order a clinician reads them: interictal (before onset, or after
a focal seizure), focal (from onset until generalisation or offset), tonic,
clonic, postictal. Nothing is fitted on any patient: the thresholds are fixed
shares of the record's own range, chosen on the design cohorts (the demo's
seed-0 sites and bench/utility_cohorts.py's explain-dev cohorts, never a test
cohort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semiofed.common.records.activity import Activity, record_activity
from semiofed.common.records.schema import SNIPPET_TIMES, SeizureRecord

INTERICTAL, FOCAL, TONIC, CLONIC, POSTICTAL = "interictal", "focal", "tonic", "clonic", "postictal"
PHASES = (INTERICTAL, FOCAL, TONIC, CLONIC, POSTICTAL)


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


def estimate_evolution(record: SeizureRecord, generalised: bool, model_generalisation_s: float | None = None, *,
                       activity: Activity | None = None) -> Evolution:
    """Phases of every snippet of `record`; `generalised`: the classifier called the seizure TCS (with its own
    generalisation estimate `model_generalisation_s`, used when no bilateral movement is found)."""
    times = record.arrays[SNIPPET_TIMES].astype(np.float64).mean(axis=1)
    activity = activity or record_activity(record)
    onset, offset = activity.start_s, activity.end_s
    generalisation_s = None
    if generalised:
        bilateral = activity.bilateral_from()
        generalisation_s = bilateral if bilateral is not None else model_generalisation_s
    if generalisation_s is not None and onset is not None:
        onset, offset = min(onset, generalisation_s), max(offset, generalisation_s)
    centres = activity.centres
    nearest = np.abs(times[:, None] - centres[None, :]).argmin(axis=1) if len(centres) else np.zeros(len(times), int)
    phases = []
    for t, w in zip(times, nearest):
        if onset is None or t < onset:
            phases.append(INTERICTAL)
        elif t > offset:
            phases.append(POSTICTAL if generalisation_s is not None else INTERICTAL)
        elif generalisation_s is not None and t >= generalisation_s:
            # a generalised seizure stiffens before it jerks: no tonic posture once the clonic phase has begun
            tonic = bool(len(centres) and activity.hold[w]) and CLONIC not in phases
            phases.append(TONIC if tonic else CLONIC)
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
