"""The one release a federated evaluation makes of a site's held-out patients (client/training/site_split.py says
which patients those are).

An evaluation releases the vector of common/federation/evaluation.py: under the
site's policy "noisy" (the default) with Gaussian noise drawn from OS entropy,
reserved and signed through `budgeted_run` like a training release (sensitivity
1 per patient, sample rate 1, one step); "exact" without noise (public by that
policy); "none" not at all. A site evaluates at most `max_evaluations_per_run`
times per run and never a test fold of fewer than `min_evaluation_patients`.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semiofed.common.federation.evaluation import NLL_CAP, TEMPERATURE_GRID
from semiofed.common.learning.metrics import softmax
from semiofed.common.learning.trainer import predict_logits


def release_vector(model: Any, validation: Sequence[Any], test: Sequence[Any], *, n_segments: int,
                   n_classes: int) -> np.ndarray:
    """Sum over patients of their contributions (each of L2 norm at most 1): confusion shares, then grid losses."""
    k, grid = n_classes, np.asarray(TEMPERATURE_GRID)
    vector = np.zeros(k * k + len(grid))
    for patient, logits in _per_patient_logits(model, test, n_segments):
        for seizure, predicted in zip(patient.seizures, np.argmax(logits, axis=1)):
            vector[int(seizure.label) * k + int(predicted)] += 1.0 / len(patient.seizures)
    scale = NLL_CAP * math.sqrt(len(grid))
    for patient, logits in _per_patient_logits(model, validation, n_segments):
        labels = np.array([s.label for s in patient.seizures])
        for g, temperature in enumerate(grid):
            probs = softmax(logits, float(temperature))
            nll = float(np.mean(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))
            # a NaN loss (the chosen weights overflowed this patient's logits) counts as the cap: were it to reach
            # the vector, the release would be NaN exactly when this patient is held out, and noise hides no NaN
            vector[k * k + g] += (min(max(nll, 0.0), NLL_CAP) if math.isfinite(nll) else NLL_CAP) / scale
    return vector


def _per_patient_logits(model: Any, patients: Sequence[Any], n_segments: int) -> list[tuple[Any, np.ndarray]]:
    """Each patient with the logits of its seizures, from one pass of the model over all of them."""
    seizures = [s for p in patients for s in p.seizures]
    if not seizures:
        return []
    logits = predict_logits(model, seizures, n_segments=n_segments)
    out, start = [], 0
    for patient in patients:
        out.append((patient, logits[start:start + len(patient.seizures)]))
        start += len(patient.seizures)
    return out


def gaussian_noise(size: int, sigma: float) -> np.ndarray:
    """N(0, sigma^2) noise from a generator seeded by the OS (never by anything in the run's configuration)."""
    return np.random.default_rng(secrets.randbits(128)).normal(0.0, sigma, size)


def count_evaluation(run_file: Path, run_id: str) -> int:
    """Record one more evaluation of `run_id` in the site's run file (under the budget lock); returns the new count."""
    from semiofed.common.files import write_json_atomic

    state = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {"run_id": run_id}
    state["evaluations"] = int(state.get("evaluations", 0)) + 1
    write_json_atomic(run_file, state)
    return state["evaluations"]


def evaluations_so_far(run_file: Path) -> int:
    return int(json.loads(run_file.read_text(encoding="utf-8")).get("evaluations", 0)) if run_file.is_file() else 0


__all__ = ["release_vector", "gaussian_noise", "count_evaluation", "evaluations_so_far"]
