"""The one budgeted DP run: check the budget -> reserve -> train -> hash the update -> sign a ledger entry.

`site train`, every fold of `site cv` and every federated round go through
`budgeted_run`. Under an exclusive lock on the site's privacy directory it
re-reads the accountant from disk, refuses a run that breaks the site's policy
(or the caller's extra limit) before any step, reserves the whole planned spend,
yields for the training steps, records what ran, and signs one ledger entry
naming the released update by `update_sha256` (semiofed.common.learning.weights).
Two trainings at once at one site therefore compose on one history instead of
overwriting each other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.common.files import make_private_dir
from semiofed.common.privacy.accountant import PlannedRun, SiteAccountant, release_epsilon
from semiofed.common.privacy.keys import load_site_private_key
from semiofed.common.privacy.ledger import release_fields
from semiofed.common.privacy.ledger_writer import append_entry, check_appendable
from semiofed.common.privacy.policy import PrivacyPolicy

log = logging.getLogger(__name__)

LOCK_FILE = "budget.lock"


@dataclass(frozen=True)
class SitePrivacy:
    """Where one site's privacy state lives and who signs its releases."""

    site_id: str
    policy: PrivacyPolicy
    privacy_dir: Path
    ledger_file: Path
    private_key: Path

    def accountant(self) -> SiteAccountant:
        """The site's lifetime accountant, read from disk now (another process may have stepped it), and never
        behind the signed ledger: every release the ledger records is in its history (rebuilt from the ledger
        when accountant.json was deleted, replaced by an older copy or edited)."""
        accountant = SiteAccountant(self.privacy_dir, self.policy)
        missing = _ledger_releases_missing(accountant, self.ledger_file)
        if missing:
            log.warning("site %s: %d ledger release(s) missing from %s: the accountant is rebuilt from the signed ledger",
                        self.site_id, len(missing), accountant.path)
            accountant.history = accountant.history + missing
            accountant.runs.append({"note": f"{len(missing)} release(s) restored from the signed ledger",
                                    "restored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            accountant.save()
        return accountant

    def check_appendable(self) -> None:
        """Raise LedgerError now, before any training, if the ledger could not take the next entry."""
        check_appendable(self.ledger_file, load_site_private_key(self.private_key).public_key())


def _ledger_releases_missing(accountant: SiteAccountant, ledger_file: Path) -> list[tuple[float, float, int]]:
    """The ledger's (sigma, q, steps) releases that the accountant's history does not hold (as a multiset)."""
    from collections import Counter

    from semiofed.common.privacy.ledger import read_entries_cached

    if not Path(ledger_file).exists():
        return []
    held = Counter(accountant.history)
    missing = []
    for entry in read_entries_cached(ledger_file):
        release = (float(entry["noise_multiplier"]), float(entry["sample_rate"]), int(entry["steps"]))
        if held[release] > 0:
            held[release] -= 1
        else:
            missing.append(release)
    return missing


def record_release(
    site: SitePrivacy,
    *,
    kind: str,
    run_id: str,
    round: int,
    update_sha256: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    clipping_norm: float,
    epsilon_cumulative: float,
    distributed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append the signed entry of one DP release; its own epsilon is computed with the site's accountant."""
    fields = release_fields(
        site_id=site.site_id, run_id=run_id, round=round, kind=kind, update_sha256=update_sha256,
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, clipping_norm=clipping_norm,
        epsilon=release_epsilon(PlannedRun(noise_multiplier, sample_rate, steps), site.policy.target_delta),
        epsilon_cumulative=epsilon_cumulative, policy=site.policy, distributed=distributed,
    )
    return append_entry(site.ledger_file, fields, load_site_private_key(site.private_key))


class BudgetedRun:
    """A reserved DP run in progress: the trainer reports its steps here, the caller hands over the update."""

    def __init__(self, accountant: SiteAccountant, planned: PlannedRun) -> None:
        self.accountant = accountant
        self.planned = planned
        self.steps_taken = 0
        self.update: list[np.ndarray] | None = None
        self.entry: dict[str, Any] | None = None

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """One noisy step happened (the Opacus accountant hook's signature)."""
        self.accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        self.steps_taken += 1

    def release(self, weights: Sequence[np.ndarray]) -> None:
        """The update that leaves the run (a model's weights); signed into the ledger when the run ends."""
        self.update = [np.asarray(w, dtype=np.float32) for w in weights]


@contextlib.contextmanager
def budget_lock(privacy_dir: Path) -> Iterator[None]:
    """Hold the site's budget lock: one budgeted run at a time per site, across processes."""
    path = make_private_dir(Path(privacy_dir)) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def budgeted_run(
    site: SitePrivacy,
    planned: PlannedRun,
    *,
    kind: str,
    run_id: str,
    round: int = 0,
    note: str = "",
    check: Callable[[SiteAccountant], None] | None = None,
    distributed: dict[str, Any] | None = None,
) -> Iterator[BudgetedRun]:
    """Check, reserve, yield for the steps, record them and sign the released update (see the module docstring).

    `check` adds the caller's own limit (e.g. a federated run's cap); it sees the accountant as re-read under
    the lock and raises to refuse. If the body raises, the steps taken stay spent and nothing is signed.
    """
    from semiofed.common.learning.weights import update_sha256

    with budget_lock(site.privacy_dir):
        accountant = site.accountant()
        if check is not None:
            check(accountant)
        accountant.check(planned)  # refuse before any step
        site.check_appendable()  # a release that cannot be recorded is refused too
        run = BudgetedRun(accountant, planned)
        with accountant.run(planned, note=note):
            yield run
        if run.update is None:
            raise SemiofedError(f"DP run {run_id} ended without its update: its {run.steps_taken} steps are spent but "
                                "unsigned", "call run.release(weights) inside the budgeted run")
        run.entry = record_release(
            site, kind=kind, run_id=run_id, round=round, update_sha256=update_sha256(run.update),
            noise_multiplier=planned.noise_multiplier, sample_rate=planned.sample_rate, steps=run.steps_taken,
            clipping_norm=site.policy.clipping_norm, epsilon_cumulative=accountant.epsilon_spent(),
            distributed=distributed,
        )
        log.info("signed %s release %s round %d (%d steps)", kind, run_id, round, run.steps_taken)


__all__ = ["SitePrivacy", "BudgetedRun", "budgeted_run", "budget_lock", "record_release"]
