"""The auditor's check of a privacy ledger: chain and signatures, plus every epsilon recomputed independently.

Independent means: the site computes epsilon with Opacus's PRV accountant;
the auditor recomputes it from the logged (sigma, q, steps, delta) with
dp-accounting's PLD accountant (`common/audit/pld.py`), and this module
never imports opacus or torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semiofed.common.privacy.keys import PublicKey, public_key_fingerprint
from semiofed.common.privacy.ledger import (
    BAD_SIGNATURE,
    BROKEN_LINK,
    EPSILON_UNDER_REPORTED,
    OUTSIDE_POLICY,
    OVER_BUDGET,
    SITE_MISMATCH,
    TRUNCATED,
    LedgerProblem,
    LedgerScan,
    chain_problems,
    distributed_terms,
    scan_ledger,
    seq_of,
    span,
    verify_head,
)

EPSILON_TOLERANCE = 0.01  # flag a reported epsilon more than 1% below the independent recomputation
INDEPENDENT_ACCOUNTANT = "dp-accounting PLD"


@dataclass
class EntryCheck:
    """One row of a verification: what the entry reports, and what the independent accountant recomputes."""

    line: int
    seq: int | None
    run_id: Any
    round: Any
    kind: Any
    time: Any
    noise_multiplier: Any
    sample_rate: Any
    steps: Any
    delta: Any
    epsilon: Any
    epsilon_cumulative: Any
    epsilon_max: Any
    epsilon_recomputed: float | None = None
    epsilon_cumulative_recomputed: float | None = None
    # distributed DP (the release's update carried sigma_site; SecAgg+'s sum carried sigma): "local" or "distributed"
    dp_mode: str = "local"
    site_noise_multiplier: Any = None
    # what the cumulative epsilon would be if every distributed release had been seen alone (SecAgg+ broken, or
    # more colluders than the site tolerated): each counted at the site's own noise
    epsilon_cumulative_without_secure_aggregation: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class LedgerVerification:
    """The result of `verify_ledger`: one row per entry and every problem found, each naming its entry."""

    path: Path
    key_fingerprint: str
    site_id: str | None
    entries: list[EntryCheck]
    problems: list[LedgerProblem]

    @property
    def ok(self) -> bool:
        """True only when form, sequence, chain, every signature and every reported epsilon verify."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ledger": str(self.path), "site_id": self.site_id, "key_fingerprint": self.key_fingerprint,
            "verified": self.ok, "accountant": INDEPENDENT_ACCOUNTANT, "epsilon_tolerance": EPSILON_TOLERANCE,
            "entries": [asdict(e) for e in self.entries],
            "problems": [asdict(p) | {"message": str(p)} for p in self.problems],
        }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _release(entry: dict[str, Any]) -> tuple[float, float, int, float] | None:
    """(sigma, q, steps, delta) when all are valid, else None (the entry is then reported as malformed)."""
    sigma, q, steps, delta = (entry.get(k) for k in ("noise_multiplier", "sample_rate", "steps", "delta"))
    valid = (_number(sigma) and sigma > 0 and _number(q) and 0 < q <= 1 and isinstance(steps, int)
             and not isinstance(steps, bool) and steps >= 0 and _number(delta) and 0 < delta < 1)
    return (float(sigma), float(q), int(steps), float(delta)) if valid else None


def _row(number: int, entry: dict[str, Any]) -> EntryCheck:
    policy = entry.get("policy") if isinstance(entry.get("policy"), dict) else {}
    terms = distributed_terms(entry)
    return EntryCheck(
        dp_mode="distributed" if terms else "local", site_noise_multiplier=terms.get("site_noise_multiplier") if terms else None,
        line=number, seq=seq_of(entry), run_id=entry.get("run_id"), round=entry.get("round"), kind=entry.get("kind"),
        time=entry.get("time"), noise_multiplier=entry.get("noise_multiplier"), sample_rate=entry.get("sample_rate"),
        steps=entry.get("steps"), delta=entry.get("delta"), epsilon=entry.get("epsilon"),
        epsilon_cumulative=entry.get("epsilon_cumulative"), epsilon_max=policy.get("max_epsilon"),
    )


def _recompute(scan: LedgerScan, rows: list[EntryCheck]) -> None:
    """Fill each row's epsilon and cumulative epsilon from PLD; cumulative in seq order, each seq counted once."""
    from semiofed.common.audit.pld import PLDComposition, release_epsilon

    releases = {row.line: _release(line.entry or {}) for line, row in zip(scan.parsed, rows)}
    for row in rows:
        release = releases[row.line]
        if release is not None:
            row.epsilon_recomputed = release_epsilon(*release)
    composition = PLDComposition()
    fallback = PLDComposition() if any(row.dp_mode == "distributed" for row in rows) else None
    by_seq: dict[int, list[EntryCheck]] = {}
    for row in rows:
        if row.seq is not None and releases[row.line] is not None:
            by_seq.setdefault(row.seq, []).append(row)
    for seq in sorted(by_seq):
        first = by_seq[seq][0]
        sigma, q, steps, delta = releases[first.line]  # type: ignore[misc]
        composition.add(sigma, q, steps)
        cumulative = composition.epsilon(delta)
        alone = None
        if fallback is not None:
            own = first.site_noise_multiplier if first.dp_mode == "distributed" else sigma
            fallback.add(min(float(own), sigma), q, steps)
            alone = fallback.epsilon(delta)
        for row in by_seq[seq]:
            row.epsilon_cumulative_recomputed = cumulative
            row.epsilon_cumulative_without_secure_aggregation = alone


def _epsilon_problems(scan: LedgerScan, rows: list[EntryCheck]) -> list[LedgerProblem]:
    """Flag reported epsilon below the recomputed one, cumulative epsilon above the budget, and releases outside the policy."""
    problems: list[LedgerProblem] = []
    for line, row in zip(scan.parsed, rows):
        entry = line.entry or {}
        release = _release(entry)
        if release is None:
            continue  # reported as malformed
        sigma, q, steps, delta = release

        def add(kind: str, detail: str) -> None:
            problems.append(LedgerProblem(kind, detail, row.line, row.seq))

        for name, reported, recomputed in (("epsilon", row.epsilon, row.epsilon_recomputed),
                                           ("epsilon_cumulative", row.epsilon_cumulative, row.epsilon_cumulative_recomputed)):
            if recomputed is not None and _number(reported) and reported < recomputed * (1 - EPSILON_TOLERANCE):
                add(EPSILON_UNDER_REPORTED, f"{name} {reported:.4g} is more than {EPSILON_TOLERANCE:.0%} below the "
                                            f"{recomputed:.4g} recomputed by the independent {INDEPENDENT_ACCOUNTANT} "
                                            f"accountant (sigma {sigma:g}, q {q:g}, {steps} steps, delta {delta:g})")
        policy = entry.get("policy") if isinstance(entry.get("policy"), dict) else {}
        reported_cumulative = row.epsilon_cumulative if _number(row.epsilon_cumulative) else 0.0
        cumulative = max(row.epsilon_cumulative_recomputed or 0.0, reported_cumulative)
        if _number(policy.get("max_epsilon")) and cumulative > policy["max_epsilon"] * (1 + EPSILON_TOLERANCE):
            add(OVER_BUDGET, f"cumulative epsilon {cumulative:.4g} exceeds the site's max_epsilon {policy['max_epsilon']:g}")
        if _number(policy.get("min_noise_multiplier")) and sigma < policy["min_noise_multiplier"]:
            add(OUTSIDE_POLICY, f"noise multiplier {sigma:g} is below the policy minimum {policy['min_noise_multiplier']:g}")
        terms = distributed_terms(entry)
        if terms is not None:
            carried = terms["site_noise_multiplier"] * math.sqrt(terms["sites"] - terms["colluders"])
            if carried < sigma * (1 - 1e-9):
                add(OUTSIDE_POLICY, f"distributed release: the site's noise {terms['site_noise_multiplier']:g} over "
                                    f"{terms['sites'] - terms['colluders']} honest sites sums to sigma {carried:.4g}, "
                                    f"less than the {sigma:g} it accounted")
        if _number(policy.get("target_delta")) and delta > policy["target_delta"]:
            add(OUTSIDE_POLICY, f"delta {delta:g} is above the policy's target_delta {policy['target_delta']:g}")
    return problems


def _head_problems(head: Any, public_key: PublicKey, scan: LedgerScan, site_id: Any) -> list[LedgerProblem]:
    """Compare the ledger with a head the site signed earlier: entries cut off the end, or rewritten."""
    if not verify_head(head, public_key):
        return [LedgerProblem(BAD_SIGNATURE, "the given ledger head is malformed or not signed by the site key")]
    if site_id is not None and head["site_id"] != site_id:
        return [LedgerProblem(SITE_MISMATCH, f"the head is of site {head['site_id']!r}, the ledger of {site_id!r}")]
    by_seq = {seq_of(line.entry): line for line in scan.parsed}  # type: ignore[arg-type]
    last = max((s for s in by_seq if s is not None), default=-1)
    if head["seq"] > last:
        return [LedgerProblem(TRUNCATED, f"the site's signed head names seq {head['seq']} but the ledger ends at seq {last}: "
                                         f"seq {span(last + 1, head['seq'])} were cut off the end")]
    line = by_seq.get(head["seq"])
    if line is not None and line.entry is not None and line.entry.get("entry_hash") != head["entry_hash"]:
        return [LedgerProblem(BROKEN_LINK, "the entry differs from the one the site's signed head names: the ledger was "
                                           "rewritten", line.number, head["seq"])]
    return []


def verify_ledger(path: Path, public_key: PublicKey, *, head: dict[str, Any] | None = None) -> LedgerVerification:
    """Verify a ledger: form, sequence, hash chain, every signature, and every epsilon recomputed with PLD.

    With `head` (a signed head the site sent earlier, e.g. with round
    metrics) also detect entries cut off the end. Raises LedgerError only
    when the file cannot be read; everything else is a listed problem.
    """
    scan = scan_ledger(path)
    problems = chain_problems(scan, public_key)
    rows = [_row(line.number, line.entry) for line in scan.parsed]  # type: ignore[arg-type]
    _recompute(scan, rows)
    problems += _epsilon_problems(scan, rows)
    site_id = next((line.entry.get("site_id") for line in scan.parsed), None)  # type: ignore[union-attr]
    if head is not None:
        problems += _head_problems(head, public_key, scan, site_id)
    by_line = {row.line: row for row in rows}
    for problem in problems:
        if problem.line in by_line and problem.kind not in by_line[problem.line].problems:
            by_line[problem.line].problems.append(problem.kind)
    problems.sort(key=lambda p: p.line if p.line is not None else math.inf)
    return LedgerVerification(path=Path(path), key_fingerprint=public_key_fingerprint(public_key),
                              site_id=site_id if isinstance(site_id, str) else None, entries=rows, problems=problems)
