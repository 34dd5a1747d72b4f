"""What a site's evaluation of a global model releases, and how the coordinator reads it.

A site does not send metrics computed on its held-out patients (an exact loss,
confusion counts or a fitted temperature answer a chosen question about a
chosen few patients). It sends one vector to which each patient contributes at
most 1 in L2 norm, so that the Gaussian mechanism on it is charged like any
other release (client/training/federated_evaluation.py):

- test patients: their share of each confusion cell (true class x predicted
  class), 1/n for each of their n seizures;
- validation patients: their mean loss at each temperature of a fixed grid,
  capped and scaled so the whole row has norm at most 1.

A patient is in the test fold or the validation fold, never both. The
coordinator sums the sites' vectors and reads pooled accuracy, balanced
accuracy and the calibration temperature (the grid point of least pooled loss)
from the sums: post-processing, which costs no privacy.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

TEMPERATURE_GRID = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
NLL_CAP = 3.0  # a validation patient's mean loss is capped here before scaling
KEY_RELEASE = "evaluation_release"  # 1: noisy (charged), 2: exact (public by the site's policy)
KEY_NOISE = "evaluation_noise_multiplier"
RELEASE_CODES = {"noisy": 1.0, "exact": 2.0}
MAX_CLASSES = 4


def cell_key(true: int, predicted: int) -> str:
    return f"cm_{true}_{predicted}"


def loss_key(index: int) -> str:
    return f"nll_t{index}"


def release_keys(n_classes: int = MAX_CLASSES) -> tuple[str, ...]:
    """Every metric name an evaluation reply may carry (the egress policy's whitelist)."""
    cells = [cell_key(i, j) for i in range(n_classes) for j in range(n_classes)]
    return (*cells, *(loss_key(g) for g in range(len(TEMPERATURE_GRID))), KEY_RELEASE, KEY_NOISE)


def to_metrics(vector: np.ndarray, n_classes: int) -> dict[str, float]:
    """The release vector (k*k confusion shares, then the grid losses) as named metrics."""
    k = n_classes
    out = {cell_key(i, j): float(vector[i * k + j]) for i in range(k) for j in range(k)}
    out.update({loss_key(g): float(vector[k * k + g]) for g in range(len(TEMPERATURE_GRID))})
    return out


def _confusion(metrics: Mapping[str, float]) -> np.ndarray:
    k = int(round(math.sqrt(sum(1 for key in metrics if key.startswith("cm_")))))
    return np.array([[float(metrics.get(cell_key(i, j), 0.0)) for j in range(k)] for i in range(k)])


def read(per_site: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Pooled accuracy, balanced accuracy and temperature from one or more sites' released vectors."""
    usable = [m for m in per_site if any(key.startswith("cm_") for key in m)]
    if not usable:
        return {}
    cm = np.clip(sum(_confusion(m) for m in usable), 0.0, None)  # noise can make a share negative
    rows = cm.sum(axis=1)
    recalls = [cm[c, c] / rows[c] for c in range(len(rows)) if rows[c] > 1e-9]
    losses = [sum(float(m.get(loss_key(g), 0.0)) for m in usable) for g in range(len(TEMPERATURE_GRID))]
    total = float(cm.sum())
    return {
        "accuracy": float(np.trace(cm) / total) if total > 1e-9 else math.nan,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "temperature": float(TEMPERATURE_GRID[int(np.argmin(losses))]),
        "patients": total,  # the noisy count of test patients the figures describe
    }


__all__ = ["TEMPERATURE_GRID", "NLL_CAP", "KEY_RELEASE", "KEY_NOISE", "RELEASE_CODES", "release_keys", "to_metrics", "read",
           "cell_key", "loss_key"]
