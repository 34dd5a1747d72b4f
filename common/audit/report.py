"""The auditor's report over many sites: each site's ledger verified, its epsilon over time against its budget.

Input layout (`find_site_ledgers`): a folder holding, for each site, either a
sub-folder `<site>/` with `ledger.jsonl` and `site_key.pub` (or
`keys/site_key.pub`, i.e. a copy of the site directory), or a pair of files
`<site>.jsonl` and `<site>.pub`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from semiofed.common.reporting import html as H
from semiofed.common.privacy.keys import load_public_key
from semiofed.common.privacy.ledger import LedgerError
from semiofed.common.audit.verify import EPSILON_TOLERANCE, INDEPENDENT_ACCOUNTANT, EntryCheck, LedgerVerification, verify_ledger

LEDGER_NAME = "ledger.jsonl"
KEY_NAME = "site_key.pub"


@dataclass(frozen=True)
class SiteLedger:
    """One site's ledger and the public key to check it with."""

    name: str
    ledger: Path
    public_key: Path


def find_site_ledgers(directory: Path) -> list[SiteLedger]:
    """Every site ledger under `directory` (see the module docstring for the layout), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LedgerError(f"ledger folder {directory} does not exist", "give a folder with one sub-folder per site")
    found = []
    for child in sorted(directory.iterdir()):
        if child.is_dir() and (child / LEDGER_NAME).is_file():
            key = next((k for k in (child / KEY_NAME, child / "keys" / KEY_NAME) if k.is_file()), None)
            if key is None:
                raise LedgerError(f"site folder {child} has {LEDGER_NAME} but no {KEY_NAME}",
                                  f"copy the site's public key (keys/{KEY_NAME}) next to its ledger")
            found.append(SiteLedger(child.name, child / LEDGER_NAME, key))
        elif child.is_file() and child.suffix == ".jsonl":
            key = child.with_suffix(".pub")
            if not key.is_file():
                raise LedgerError(f"ledger {child} has no public key {key.name} beside it",
                                  f"copy the site's keys/{KEY_NAME} to {key}")
            found.append(SiteLedger(child.stem, child, key))
    if not found:
        raise LedgerError(f"no site ledgers in {directory}",
                          f"put one folder per site holding {LEDGER_NAME} and {KEY_NAME}, or SITE.jsonl with SITE.pub")
    return found


def audit_site(site: SiteLedger) -> LedgerVerification:
    """Verify one site's ledger with its public key."""
    return verify_ledger(site.ledger, load_public_key(site.public_key))


# --- summaries -----------------------------------------------------------------
def _last(v: LedgerVerification) -> EntryCheck | None:
    return v.entries[-1] if v.entries else None


def _status(v: LedgerVerification) -> H.Markup:
    if v.ok:
        return H.badge("verified", H.STATUS_OK)
    return H.badge(f"NOT VERIFIED: {len(v.problems)} problem{'s' if len(v.problems) != 1 else ''}", H.STATUS_FAIL)


def _runs(v: LedgerVerification) -> list[list[Any]]:
    """One row per run: kind, rounds, steps, time span, cumulative epsilon after it, status."""
    groups: dict[str, list[EntryCheck]] = {}
    for row in v.entries:
        groups.setdefault(str(row.run_id), []).append(row)
    table = []
    for run_id, rows in groups.items():
        rounds = sorted(r.round for r in rows if isinstance(r.round, int))
        bad = sorted({kind for r in rows for kind in r.problems})
        table.append([
            run_id, ", ".join(sorted({str(r.kind) for r in rows})), len(rows),
            f"{rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else (str(rounds[0]) if rounds else ""),
            sum(r.steps for r in rows if isinstance(r.steps, int)), rows[0].time, rows[-1].time,
            rows[-1].epsilon_cumulative, rows[-1].epsilon_cumulative_recomputed,
            H.badge(", ".join(bad), H.STATUS_FAIL) if bad else H.badge("ok", H.STATUS_OK),
        ])
    return table


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def epsilon_figure(name: str, v: LedgerVerification) -> Any:
    """Cumulative epsilon after each release (reported and recomputed) against the site's budget, over time."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.add_subplot()
    rows = [(t, r) for r in v.entries if (t := _time(r.time)) is not None]
    if rows:
        times = [t for t, _ in rows]
        reported = [r.epsilon_cumulative if isinstance(r.epsilon_cumulative, (int, float)) else float("nan") for _, r in rows]
        recomputed = [r.epsilon_cumulative_recomputed if r.epsilon_cumulative_recomputed is not None else float("nan")
                      for _, r in rows]
        budget = [r.epsilon_max if isinstance(r.epsilon_max, (int, float)) else float("nan") for _, r in rows]
        ax.step(times, reported, where="post", marker="o", markersize=3, label="reported by the site (Opacus PRV)")
        ax.step(times, recomputed, where="post", linestyle="--", marker="x", markersize=4,
                label=f"recomputed by the auditor ({INDEPENDENT_ACCOUNTANT})")
        ax.step(times, budget, where="post", color="tab:red", linewidth=1.2, label="budget (policy max_epsilon)")
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
        top = max((y for y in reported + recomputed + budget if y == y), default=1.0)  # y == y: not NaN
        ax.set_ylim(0, top * 1.1)
    else:
        ax.text(0.5, 0.5, "no DP releases recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{name}: cumulative epsilon (UTC)", fontsize=10)
    ax.set_ylabel("epsilon")
    ax.grid(alpha=0.3)
    return fig


def _site_section(site: SiteLedger, v: LedgerVerification) -> H.Markup:
    last = _last(v)
    facts = H.table(None, [
        ["site id (in the ledger)", v.site_id or ""],
        ["ledger", H.code(str(site.ledger))],
        ["public key", H.code(f"{site.public_key.name} {v.key_fingerprint}")],
        ["releases (entries)", len(v.entries)],
        ["delta", last.delta if last else None],
        ["verification", _status(v)],
    ])
    blocks = [facts, H.figure(epsilon_figure(site.name, v),
                              caption="Each point is one DP release (a local run, or one federated round).")]
    if v.entries:
        blocks.append(H.table(
            ["run", "kind", "releases", "rounds", "steps", "first", "last", "epsilon cumulative (reported)",
             "epsilon cumulative (recomputed)", "status"], _runs(v), caption="Runs and rounds"))
    if v.problems:
        blocks.append(H.table(["line", "seq", "kind", "detail"], [[p.line, p.seq, p.kind, p.detail] for p in v.problems],
                              caption="Problems"))
    return H.section(f"Site {site.name}", *blocks)


def build_report(results: list[tuple[SiteLedger, LedgerVerification]], *, title: str = "semiofed privacy audit") -> str:
    """The whole self-contained HTML report."""
    summary = []
    for site, v in results:
        last = _last(v)
        summary.append([site.name, len(v.entries), len({str(r.run_id) for r in v.entries}),
                        last.epsilon_cumulative if last else 0.0, last.epsilon_cumulative_recomputed if last else 0.0,
                        last.epsilon_max if last else None, last.delta if last else None, _status(v)])
    method = H.bullet_list([
        "Chain: every entry's sha256 is recomputed from its canonical JSON and must equal its entry_hash; each "
        "prev_hash must equal the previous entry's entry_hash; sequence numbers must run 0, 1, 2, ... without gaps.",
        "Signatures: every entry must carry an ECDSA P-384/SHA-384 signature by the site's key (fingerprint shown).",
        f"Epsilon: each release's epsilon and the cumulative epsilon are recomputed from the logged noise multiplier, "
        f"sampling rate, steps and delta with {INDEPENDENT_ACCOUNTANT}, independently of the site's Opacus PRV "
        f"accountant; a reported value more than {EPSILON_TOLERANCE:.0%} below the recomputed one is flagged.",
        "Not detectable from a ledger alone: entries cut off its end (compare with a head the site signed: "
        "semiofed audit verify --head), and releases never recorded.",
    ])
    body = [
        H.section("Summary", H.table(
            ["site", "releases", "runs", "epsilon cumulative (reported)", "epsilon cumulative (recomputed)",
             "budget (max epsilon)", "delta", "verification"], summary), H.heading("What is checked", 3), method),
        *(_site_section(site, v) for site, v in results),
    ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return H.page(title, *body, subtitle=f"{len(results)} site(s), generated {generated}; privacy unit: patient")
