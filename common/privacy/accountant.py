"""Privacy accounting for one site: create, persist, restore the accountant and enforce the budget.

Knows nothing of models. The training loop reports "one step with (sigma, q)"
through `step`; this module turns the history into epsilon with Opacus's PRV
accountant, writes it to the site's disk, and refuses a run that would exceed
the site's policy before the run starts. A run is reserved on disk (its full
planned spend) before its first step, so a crash can only over-count.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.common.files import write_json_atomic
from semiofed.common.privacy.policy import NEIGHBOURING_RELATION, PRIVACY_UNIT, PrivacyPolicy

log = logging.getLogger(__name__)

ACCOUNTANT_FILE = "accountant.json"
STATE_VERSION = 1
MECHANISM = "prv"  # Opacus PRV (Gopi et al. 2021): tight, agrees with PLD within 0.1%
EPS_ERROR = 0.01  # PRV's epsilon discretisation error; its upper bound is reported

RUN_RESERVED = "reserved"
RUN_DONE = "done"
RUN_STOPPED = "stopped"


class PrivacyBudgetError(SemiofedError):
    """A run would exceed the site's privacy budget, or the accountant state is unusable."""


@contextlib.contextmanager
def _quiet_opacus_import() -> Iterator[None]:
    """Import opacus without letting its logging.basicConfig change the host's logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _make_accountant() -> Any:
    with _quiet_opacus_import():
        from opacus.accountants import PRVAccountant
    return PRVAccountant()


def load_accountants() -> None:
    """Import the accountants' library now (Opacus: about 6 s on a 2-core machine), e.g. while a site worker waits for
    its first message, so that a budget query does not pay for it."""
    with _quiet_opacus_import():
        import opacus.accountants  # noqa: F401


def _merged(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Composition commutes: one entry per (sigma, q) makes the PRV convolution cheaper.

    At q = 1 a step is the plain Gaussian mechanism, and Gaussian mechanisms compose exactly into one Gaussian
    mechanism (mu-GDP: mu = 1 / sigma, mu_total^2 = sum of mu^2; Dong, Roth & Su 2022), so every q = 1 step folds
    into a single step at sigma = (sum of steps / sigma^2)^(-1/2): the same epsilon, and a 200-round
    distributed-DP run costs the PRV one step instead of 200."""
    steps: dict[tuple[float, float], int] = {}
    gaussian = 0.0  # sum over q = 1 steps of 1 / sigma^2
    for sigma, q, n in history:
        if q >= 1.0:
            gaussian += int(n) / float(sigma) ** 2
            continue
        steps[(sigma, q)] = steps.get((sigma, q), 0) + int(n)
    merged = [(sigma, q, n) for (sigma, q), n in steps.items() if n]
    return merged + ([(gaussian ** -0.5, 1.0, 1)] if gaussian > 0 else [])


def _epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    return _epsilon_of_merged(tuple(_merged(history)), float(delta))


@functools.lru_cache(maxsize=512)
def _epsilon_of_merged(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """PRV epsilon of a merged history (cached: a round asks for the same history several times)."""
    if not history:
        return 0.0
    accountant = _make_accountant()
    accountant.history = list(history)
    # at q = 1 Opacus's PRV code takes log(0) on a branch np.where discards
    with np.errstate(divide="ignore"):
        return float(accountant.get_epsilon(delta=delta, eps_error=EPS_ERROR))


def release_epsilon(run: "PlannedRun", delta: float) -> float:
    """Epsilon of one run on its own (a ledger entry's `epsilon`)."""
    return _epsilon_of([(run.noise_multiplier, run.sample_rate, run.steps)], delta)


def least_sigma(epsilon: Callable[[float], float], target: float, *, floor: float, start: float = 1.0,
                tolerance: float = 0.02, ceiling: float = 1e4) -> tuple[float, int]:
    """The least sigma >= `floor` with epsilon(sigma) <= target, to within `tolerance` of itself, for an epsilon
    that falls as sigma grows; returns (sigma, evaluations).

    Each evaluation is a PRV convolution (0.3-1 s), so the search is a secant search on log epsilon against log
    sigma, where the curve is close to a line (epsilon ~ 1/sigma for many subsampled Gaussian steps), inside a
    bracket [an infeasible sigma, a feasible one] once it has one (regula falsi, Illinois variant). Every candidate
    is clamped so that it either ends the search (it lands within `tolerance` of the bracket's other end) or
    shrinks the bracket by at least that much; the answer is always a sigma that was evaluated and found feasible."""
    evaluations = 0

    def log_excess(sigma: float) -> float:
        nonlocal evaluations
        evaluations += 1
        try:
            value = float(epsilon(sigma))
        except (ArithmeticError, ValueError, RuntimeError):  # the accountant's own failure at an extreme sigma
            value = math.inf
        return math.log(value / target) if 0 < value < math.inf else (math.inf if value > 0 else -math.inf)

    floor = float(floor)
    sigma = max(float(start), floor)
    previous: tuple[float, float] | None = None  # (log sigma, log epsilon/target) of the evaluation before
    low: tuple[float, float] | None = None  # the largest infeasible sigma so far
    high: tuple[float, float] | None = None  # the least feasible sigma so far
    side = 0  # which end the last evaluation replaced (Illinois: halve the other end's value after two in a row)
    while True:
        value = log_excess(sigma)
        point = (math.log(sigma), value)
        if value <= 0:
            high = point
            if side == 1 and low is not None:
                low = (low[0], low[1] / 2)
            side = 1
            if sigma <= floor * (1 + 1e-12):
                return floor, evaluations
        else:
            low = point
            if side == -1 and high is not None:
                high = (high[0], high[1] / 2)
            side = -1
        if high is not None and low is not None and math.exp(high[0]) - math.exp(low[0]) <= tolerance * math.exp(high[0]):
            return math.exp(high[0]), evaluations
        if evaluations >= 60:
            raise PrivacyBudgetError(f"the noise search for epsilon {target:g} did not settle", "train fewer steps")
        last, previous = previous, point
        if high is not None and low is not None:  # regula falsi between the bracket's ends
            a, b = low, high
            guess = a[0] - a[1] * (b[0] - a[0]) / (b[1] - a[1]) if math.isfinite(a[1]) and a[1] != b[1] else (a[0] + b[0]) / 2
            lowest = low[0] - math.log(1 - 0.99 * tolerance)  # feasible here: the search ends
            highest = high[0] + math.log(1 - 0.99 * tolerance)  # infeasible here: the search ends
            sigma = math.exp(min(max(guess, lowest), highest))
            continue
        # one side only: step along the curve's slope (the last two points', else epsilon ~ 1/sigma), at most 4x
        slope = -1.0
        if last is not None and math.isfinite(last[1]) and math.isfinite(point[1]) and last[0] != point[0]:
            slope = min(-0.3, max(-10.0, (point[1] - last[1]) / (point[0] - last[0])))
        step = -point[1] / slope if math.isfinite(point[1]) else math.log(4.0)
        if high is not None:  # feasible so far: go down, by at least the tolerance
            sigma = max(floor, math.exp(point[0] + max(-math.log(4.0), min(step, math.log(1 - 0.99 * tolerance)))))
        else:  # infeasible so far: go up
            sigma = math.exp(point[0] + min(math.log(4.0), max(step, -math.log(1 - 0.99 * tolerance))))
            if sigma > ceiling:
                raise PrivacyBudgetError(f"no noise multiplier up to {ceiling:g} reaches epsilon {target:g}", "train fewer steps")


def pld_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of the same history from dp-accounting's PLD accountant (independent cross-check)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant()
    for sigma, q, steps in history:
        accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), int(steps))
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class PlannedRun:
    """What a training run will spend: `steps` Poisson-sampled Gaussian steps at (sigma, q)."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyBudgetError(f"noise multiplier {self.noise_multiplier} is not positive", "use e.g. 1.0")
        if not (0.0 < self.sample_rate <= 1.0):
            raise PrivacyBudgetError(f"sample rate {self.sample_rate} is outside (0, 1]", "use fewer patients per batch")
        if self.steps < 1:
            raise PrivacyBudgetError(f"a run needs at least one step, got {self.steps}")


def _check_history(raw: Any, path: Path) -> list[tuple[float, float, int]]:
    bad = PrivacyBudgetError(
        f"accountant state {path} has a malformed history",
        "restore it from backup; do not delete it (that would forget the privacy already spent)",
    )
    if not isinstance(raw, list):
        raise bad
    history = []
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise bad
        sigma, q, steps = entry
        if not (isinstance(steps, int) and steps >= 0 and float(sigma) > 0 and 0 < float(q) <= 1):
            raise bad
        if steps:
            history.append((float(sigma), float(q), int(steps)))
    return history


class SiteAccountant:
    """The privacy spent on one site's data over its whole life, persisted in `privacy_dir`."""

    def __init__(self, privacy_dir: Path, policy: PrivacyPolicy) -> None:
        self.path = Path(privacy_dir) / ACCOUNTANT_FILE
        self.policy = policy
        self.history: list[tuple[float, float, int]] = []
        self.runs: list[dict[str, Any]] = []
        self._active: int | None = None
        if self.path.exists():
            self.load_state_dict(self._read())

    # --- state -----------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PrivacyBudgetError(
                f"accountant state {self.path} is unreadable ({exc})",
                "restore it from backup; do not delete it (that would forget the privacy already spent)",
            ) from exc

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the accountant: mechanism, (sigma, q, steps) history, runs."""
        return {
            "version": STATE_VERSION,
            "mechanism": MECHANISM,
            "privacy_unit": PRIVACY_UNIT,
            "neighbouring_relation": NEIGHBOURING_RELATION,
            "history": [[s, q, n] for s, q, n in self.history],
            "runs": self.runs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output, checking what it loads."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise PrivacyBudgetError(
                f"accountant state {self.path} has version {state.get('version') if isinstance(state, dict) else None}, "
                f"this semiofed reads {STATE_VERSION}",
                "use the semiofed version that wrote it",
            )
        if state.get("mechanism") != MECHANISM:
            raise PrivacyBudgetError(
                f"accountant state {self.path} uses mechanism '{state.get('mechanism')}', expected '{MECHANISM}'",
                "restore the file written by semiofed",
            )
        if state.get("privacy_unit") != PRIVACY_UNIT:
            raise PrivacyBudgetError(f"accountant state {self.path} counts privacy per '{state.get('privacy_unit')}'",
                                     f"semiofed accounts per {PRIVACY_UNIT}")
        self.history = _check_history(state.get("history"), self.path)
        runs = state.get("runs", [])
        self.runs = runs if isinstance(runs, list) else []

    def save(self) -> None:
        """Write the state atomically (owner-only)."""
        write_json_atomic(self.path, self.state_dict())

    # --- queries ---------------------------------------------------------
    @property
    def delta(self) -> float:
        return self.policy.target_delta

    def epsilon_spent(self) -> float:
        """Epsilon spent so far at the policy's delta."""
        return _epsilon_of(self.history, self.delta)

    def projected_epsilon(self, run: PlannedRun) -> float:
        """Epsilon after the history plus `run`."""
        return self.projected_epsilon_of([run])

    def projected_epsilon_of(self, runs: Sequence[PlannedRun]) -> float:
        """Epsilon after the history plus all `runs` (nothing is recorded)."""
        return _epsilon_of(self.history + [(r.noise_multiplier, r.sample_rate, r.steps) for r in runs], self.delta)

    def summary(self) -> dict[str, Any]:
        """Spent and remaining budget, JSON-ready."""
        spent = self.epsilon_spent()
        return {
            "epsilon_spent": spent,
            "epsilon_max": self.policy.max_epsilon,
            "epsilon_remaining": max(self.policy.max_epsilon - spent, 0.0),
            "delta": self.delta,
            "accountant": MECHANISM,
            "privacy_unit": PRIVACY_UNIT,
            "neighbouring_relation": NEIGHBOURING_RELATION,
            "steps": sum(n for _, _, n in self.history),
            "runs": len(self.runs),
        }

    # --- enforcement -----------------------------------------------------
    def check(self, run: PlannedRun) -> float:
        """Refuse (raise) a run below the policy's noise floor or beyond its budget; return the projected epsilon."""
        if run.noise_multiplier < self.policy.min_noise_multiplier:
            raise PrivacyBudgetError(
                f"noise multiplier {run.noise_multiplier:.3f} is below this site's minimum {self.policy.min_noise_multiplier}",
                f"use --noise-multiplier >= {self.policy.min_noise_multiplier}, or --epsilon to let semiofed choose",
            )
        spent = self.epsilon_spent()
        projected = self.projected_epsilon(run)
        if projected > self.policy.max_epsilon:
            raise PrivacyBudgetError(
                f"training refused before any step: {run.steps} steps at noise multiplier {run.noise_multiplier:.3f} "
                f"and patient sampling rate {run.sample_rate:.4f} would bring epsilon from {spent:.3f} to "
                f"{projected:.3f} (delta {self.delta:g}), above this site's maximum {self.policy.max_epsilon:g}",
                "train fewer epochs, sample fewer patients per step, raise --noise-multiplier, or pass --epsilon "
                f"at most {max(self.policy.max_epsilon - spent, 0.0):.3f}",
            )
        return projected

    def noise_for(self, *, target_epsilon: float, sample_rate: float, steps: int, tolerance: float = 0.02) -> float:
        """The least sigma (>= the policy minimum) that keeps total epsilon <= target_epsilon after `steps` steps."""
        target = min(target_epsilon, self.policy.max_epsilon)
        spent = self.epsilon_spent()
        if target <= spent:
            raise PrivacyBudgetError(
                f"epsilon target {target:g} is not above the {spent:.3f} already spent (maximum {self.policy.max_epsilon:g})",
                "nothing is left to spend at this target; choose a larger --epsilon within the site's maximum",
            )
        sigma, evaluations = least_sigma(
            lambda sigma: self.projected_epsilon(PlannedRun(sigma, sample_rate, steps)), target,
            floor=self.policy.min_noise_multiplier, start=max(self.policy.min_noise_multiplier, 1.0), tolerance=tolerance)
        log.debug("noise search: sigma %.4f for epsilon %.4f after %d PRV evaluations", sigma, target, evaluations)
        return sigma

    @contextlib.contextmanager
    def run(self, planned: PlannedRun, *, note: str = "") -> Iterator["SiteAccountant"]:
        """Check, reserve the whole planned spend on disk, yield for the steps, then record what ran."""
        self.check(planned)
        base = list(self.history)
        self.history = base + [(planned.noise_multiplier, planned.sample_rate, planned.steps)]
        self.runs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": note,
                          "noise_multiplier": planned.noise_multiplier, "sample_rate": planned.sample_rate,
                          "planned_steps": planned.steps, "steps": planned.steps, "status": RUN_RESERVED})
        self.save()
        self._active, self._base, self._taken = len(self.runs) - 1, base, 0
        log.info("reserved %d steps (sigma %.3f, q %.4f)", planned.steps, planned.noise_multiplier, planned.sample_rate)
        try:
            yield self
        finally:
            run = self.runs[self._active]
            run["steps"] = self._taken
            run["status"] = RUN_DONE if self._taken == planned.steps else RUN_STOPPED
            self.history = base + ([(planned.noise_multiplier, planned.sample_rate, self._taken)] if self._taken else [])
            self._active = None
            self.save()

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """One noisy step happened (the Opacus accountant hook's signature)."""
        if self._active is None:
            raise PrivacyBudgetError("a DP step was reported outside a reserved run", "wrap training in `accountant.run(...)`")
        run = self.runs[self._active]
        if (noise_multiplier, sample_rate) != (run["noise_multiplier"], run["sample_rate"]) or self._taken >= run["planned_steps"]:
            raise PrivacyBudgetError(
                f"step with (sigma {noise_multiplier}, q {sample_rate}) after {self._taken} steps does not match the reserved run",
                "steps must match the planned run that was checked against the budget",
            )
        self._taken += 1
