"""Run a trained classifier on one de-identified record: calibrated probabilities, a timeline, and what a clinician
reads with them (`assess_record`): the seizure's evolution, per-region and per-time attributions, and whether the
seizure is unlike the reference seizures the model was calibrated on."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from semiofed.common.learning.checkpoint import Checkpoint
from semiofed.common.learning.trainer import snippet_logits
from semiofed.common.records.activity import Activity, record_activity, seizure_snippets
from semiofed.common.records.features import record_inputs
from semiofed.common.files import write_bytes_atomic
from semiofed.common.learning.metrics import softmax
from semiofed.common.records.schema import SNIPPET_TIMES, SeizureRecord

if TYPE_CHECKING:
    from semiofed.client.training.evolution import Evolution
    from semiofed.client.training.explain import Explanation

log = logging.getLogger(__name__)

GENERALISED_LABEL = "TCS"
# A generalisation call needs the TCS probability above one half for this many snippets in a row.
MIN_RUN_SNIPPETS = 3


@dataclass(frozen=True)
class Prediction:
    """Seizure-level calibrated probabilities, per-snippet probabilities and the generalisation estimate."""

    labels: tuple[str, ...]
    probabilities: dict[str, float]
    predicted: str
    confidence: float
    temperature: float
    snippet_times: np.ndarray  # [S] snippet mid-times, seconds
    snippet_probabilities: np.ndarray  # [S, C] over the whole video (the causal model as the video unfolds)
    generalisation_s: float | None
    seizure_snippets: np.ndarray | None = None  # [S] bool: the snippets the seizure-level decision read


def estimate_generalisation(times: np.ndarray, p_tcs: np.ndarray, *, run: int = MIN_RUN_SNIPPETS) -> float | None:
    """Start time of the first run of `run` snippets with P(TCS) >= 0.5, else None."""
    above = p_tcs >= 0.5
    for i in range(len(above) - run + 1):
        if above[i : i + run].all():
            return float(times[i])
    return None


def predict_record(checkpoint: Checkpoint, record: SeizureRecord, *, seizure_only: bool = True,
                   activity: Activity | None = None) -> Prediction:
    """Classify one record, calibrated by the checkpoint's temperature.

    The seizure-level decision reads the seizure itself: the snippets of the record's movement span and a little
    either side (common/records/activity.py), as the clips the models are trained on hold the seizure with a second
    or two around it; a long video's rest and recovery would otherwise dilute the pooled logits. `seizure_only=False`
    reads every snippet. The per-snippet timeline covers the whole video."""
    checkpoint.check_record(record)
    config = checkpoint.config
    inputs = record_inputs(record, config.streams)
    read = seizure_snippets(record, activity) if seizure_only else np.ones(inputs.shape[0], dtype=bool)
    whole, snippets = snippet_logits(checkpoint.model, inputs)
    seizure = whole if read.all() else snippet_logits(checkpoint.model, inputs[read])[0]
    t = checkpoint.temperature
    probs = softmax(seizure[None], t)[0]
    snippet_probs = softmax(snippets, t)
    times = record.arrays[SNIPPET_TIMES].mean(axis=1)
    labels = config.labels
    generalisation = None
    if GENERALISED_LABEL in labels and labels[int(probs.argmax())] == GENERALISED_LABEL:
        generalisation = estimate_generalisation(times, snippet_probs[:, labels.index(GENERALISED_LABEL)])
    return Prediction(labels=labels, probabilities={l: float(p) for l, p in zip(labels, probs)},
                      predicted=labels[int(probs.argmax())], confidence=float(probs.max()), temperature=t,
                      snippet_times=times, snippet_probabilities=snippet_probs, generalisation_s=generalisation,
                      seizure_snippets=read)


@dataclass(frozen=True)
class Assessment:
    """A prediction with its evolution, explanation and unusual-seizure check."""

    prediction: Prediction
    evolution: "Evolution"
    explanation: "Explanation"
    unusual: dict[str, object]  # {score, tail, threshold, flag} or {score: None, flag: None, note}

    @property
    def decision(self) -> str:
        """The predicted class, or 'review' when the seizure is flagged as unusual (not silently classified)."""
        return "review" if self.unusual.get("flag") else self.prediction.predicted

    def to_json(self) -> dict[str, object]:
        """The JSON of `semiofed predict --format json` (without the video and page paths)."""
        p, e = self.prediction, self.explanation
        return {"decision": self.decision, "predicted": p.predicted, "confidence": round(p.confidence, 4),
                "confidence_interval": [round(v, 4) for v in e.interval], "probabilities": p.probabilities,
                "temperature": p.temperature, "generalization_s": self.evolution.to_json()["generalization_s"],
                "evolution": self.evolution.to_json(), "regions": e.to_json()["regions"],
                "regions_direction": e.to_json()["regions_direction"],
                "regions_read": e.region_read, "top_region": e.top_region, "regions_cover": e.covers,
                "side": e.side.to_json() if e.side is not None else None, "unusual": self.unusual}


def unusual_check(checkpoint: Checkpoint, record: SeizureRecord, activity: Activity | None = None) -> dict[str, object]:
    """The checkpoint's unusual-seizure reference applied to the record, or why there is none."""
    from semiofed.common.learning.unusual import NO_MOVEMENT, UnusualModel, movement_measured, seizure_reading

    raw = checkpoint.meta.get("unusual")
    windows, read_on = seizure_reading(record, activity)
    if not movement_measured(windows):
        return dict(NO_MOVEMENT)  # nothing to classify from, with or without a reference
    if not raw:
        return {"score": None, "flag": None,
                "note": "this model has no unusual-seizure reference: calibrate it on public reference seizures "
                        "(`semiofed calibrate`)"}
    return UnusualModel.from_json(raw).assess_windows(windows, read_on)

def assess_record(checkpoint: Checkpoint, record: SeizureRecord) -> Assessment:
    """Prediction, evolution, attributions and the unusual-seizure check of one record."""
    from semiofed.client.training.evolution import estimate_evolution
    from semiofed.client.training.explain import explain_record

    activity = record_activity(record)  # the movement span every part reads, computed once
    prediction = predict_record(checkpoint, record, activity=activity)
    generalised = prediction.predicted == GENERALISED_LABEL
    return Assessment(prediction=prediction,
                      evolution=estimate_evolution(record, generalised, prediction.generalisation_s, activity=activity),
                      explanation=explain_record(checkpoint, record, prediction.predicted, activity=activity),
                      unusual=unusual_check(checkpoint, record, activity))


def write_timeline_png(prediction: Prediction, path: Path, *, title: str = "") -> Path:
    """Plot per-snippet class probability over time, with the estimated generalisation time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3), dpi=110)
    for c, label in enumerate(prediction.labels):
        ax.plot(prediction.snippet_times, prediction.snippet_probabilities[:, c], label=f"P({label})")
    if prediction.generalisation_s is not None:
        ax.axvline(prediction.generalisation_s, color="k", linestyle="--",
                   label=f"estimated generalisation {prediction.generalisation_s:.1f} s")
    ax.set_ylim(0, 1)
    ax.set_xlabel("time from video start (s)")
    ax.set_ylabel("probability (calibrated)")
    ax.set_title(title or f"{prediction.predicted} ({prediction.confidence:.0%})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue(), mode=0o644)
    return Path(path)
