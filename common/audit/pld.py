"""The auditor's accountant: dp-accounting's PLD, independent of training's Opacus PRV (and never imports opacus).

Each ledger entry is `steps` Poisson-sampled Gaussian steps at (sigma, q),
i.e. dp-accounting's `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`
composed `steps` times under add/remove-one neighbouring (one patient).
The PLD of one step is the slow part (a dense grid of privacy losses), so it
is built once per (sigma, q) and self-composed per entry, exactly as
`dp_accounting.pld.PLDAccountant` does internally.
"""

from __future__ import annotations

import functools
import math
from typing import Any

# dp-accounting's default grid: pessimistic (an upper bound), within ~0.1% of PRV in our tests
VALUE_DISCRETIZATION_INTERVAL = 1e-4


@functools.lru_cache(maxsize=32)
def _step_pld(sigma: float, q: float) -> Any:
    from dp_accounting.pld import privacy_loss_distribution as pld
    from dp_accounting.privacy_accountant import NeighboringRelation

    return pld.from_gaussian_mechanism(
        standard_deviation=sigma,  # noise multiplier: sensitivity (the clipping norm) is 1 in these units
        sampling_prob=q,
        value_discretization_interval=VALUE_DISCRETIZATION_INTERVAL,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,  # add/remove all seizures of one patient
    )


@functools.lru_cache(maxsize=64)
def _release_pld(sigma: float, q: float, steps: int) -> Any:
    return _step_pld(sigma, q).self_compose(steps)


def release_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Epsilon of one release alone: `steps` Poisson-sampled Gaussian steps at (sigma, q)."""
    if steps == 0:
        return 0.0
    if q >= 1.0:  # Gaussian mechanisms compose exactly into one (see PLDComposition)
        return float(_release_pld(float(sigma) / math.sqrt(steps), 1.0, 1).get_epsilon_for_delta(delta))
    return float(_release_pld(float(sigma), float(q), int(steps)).get_epsilon_for_delta(delta))


class PLDComposition:
    """Epsilon of a growing sequence of releases, composed one by one (for cumulative epsilon at each entry).

    Steps at q = 1 are the plain Gaussian mechanism, which composes exactly (mu-GDP: mu^2 adds up, mu = 1 /
    sigma): they are kept as one running sum and enter the PLD as a single Gaussian step, so a ledger of 200
    one-step distributed rounds is not 200 PLD convolutions."""

    def __init__(self) -> None:
        self._pld: Any = None
        self._gaussian = 0.0  # sum over q = 1 steps of 1 / sigma^2

    def add(self, sigma: float, q: float, steps: int) -> None:
        """Compose one more release."""
        if steps == 0:
            return
        if q >= 1.0:
            self._gaussian += steps / float(sigma) ** 2
            return
        release = _release_pld(float(sigma), float(q), int(steps))
        self._pld = release if self._pld is None else self._pld.compose(release)

    def epsilon(self, delta: float) -> float:
        """Epsilon of everything composed so far at `delta`."""
        pld = self._pld
        if self._gaussian > 0:
            gaussian = _release_pld(self._gaussian ** -0.5, 1.0, 1)
            pld = gaussian if pld is None else pld.compose(gaussian)
        return 0.0 if pld is None else float(pld.get_epsilon_for_delta(delta))
