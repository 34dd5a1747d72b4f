"""`semiofed audit`: verify a site's privacy ledger, and report on every site's ledger as one HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.common.errors import SemiofedError

app = typer.Typer(
    help="Privacy audit: check sites' signed ledgers (hash chain, signatures, epsilon recomputed independently).",
    no_args_is_help=True,
)

def _eps(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _entries_table(verification: Any) -> Table:
    table = Table(title=f"ledger {verification.path}")
    distributed = any(row.dp_mode == "distributed" for row in verification.entries)
    columns = ["seq", "run", "round", "kind", "time", "sigma", "q", "steps", "eps", "eps PLD", "eps cum.", "eps cum. PLD",
               "budget", "status"]
    if distributed:  # the site's own share of the noise, and what holds if its updates were seen alone
        columns[6:6] = ["sigma site"]
        columns[-2:-2] = ["eps cum. w/o SecAgg"]
    for column in columns:
        table.add_column(column, justify="right" if column.startswith(("eps", "sigma", "q", "steps", "budget")) else "left")
    for row in verification.entries:
        status = "[green]ok[/]" if row.ok else f"[red]{', '.join(row.problems)}[/]"
        cells = [
            str(row.seq), str(row.run_id), str(row.round), str(row.kind), str(row.time), _eps(row.noise_multiplier),
            f"{row.sample_rate:.4g}" if isinstance(row.sample_rate, float) else "-", str(row.steps), _eps(row.epsilon),
            _eps(row.epsilon_recomputed), _eps(row.epsilon_cumulative), _eps(row.epsilon_cumulative_recomputed),
            _eps(row.epsilon_max), status,
        ]
        if distributed:
            cells[6:6] = [_eps(row.site_noise_multiplier)]
            cells[-2:-2] = [_eps(row.epsilon_cumulative_without_secure_aggregation)]
        table.add_row(*cells)
    return table


def _print_verification(console: Console, verification: Any) -> None:
    console.print(_entries_table(verification))
    for problem in verification.problems:
        console.print(f"[red]{problem}[/]", highlight=False)
    who = f"site {verification.site_id}, " if verification.site_id else ""
    if verification.ok:
        console.print(f"[bold green]VERIFIED[/]: {who}{len(verification.entries)} entries, key {verification.key_fingerprint}",
                      highlight=False)
    else:
        console.print(f"[bold red]NOT VERIFIED[/]: {who}{len(verification.problems)} problem(s) in "
                      f"{len(verification.entries)} entries, key {verification.key_fingerprint}", highlight=False)


def _read_head(path: Path) -> dict[str, Any]:
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SemiofedError(f"ledger head {path} is missing", "give the JSON head the site sent with its round metrics") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SemiofedError(f"ledger head {path} is not readable JSON ({exc})",
                            "give the head exactly as the site sent it") from exc
    if not isinstance(head, dict):
        raise SemiofedError(f"ledger head {path} is not a JSON object", "give the head exactly as the site sent it")
    return head


@app.command("verify")
def verify(
    ledger: Path = typer.Option(..., "--ledger", help="The site's ledger.jsonl."),
    site_key: Path = typer.Option(..., "--site-key", help="The site's public key (keys/site_key.pub, OpenSSH format)."),
    head: Optional[Path] = typer.Option(None, "--head", help="A signed ledger head (JSON) the site sent earlier: "
                                                             "also detects entries cut off the end."),
    output_format: OutputFormat = format_option("table, or json on stdout (the table then goes to stderr)."),
) -> None:
    """Verify a site's privacy ledger: hash chain, every signature, every epsilon recomputed; exit 1 unless all verify."""
    from semiofed.common.privacy.keys import load_public_key
    from semiofed.common.audit.verify import verify_ledger

    public_key = load_public_key(site_key)
    verification = verify_ledger(ledger, public_key, head=_read_head(head) if head else None)
    _print_verification(Console(stderr=output_format is OutputFormat.json), verification)
    emit(output_format, verification.to_dict(), lambda: None)
    if not verification.ok:
        raise typer.Exit(1)


@app.command("report")
def report(
    ledgers: Path = typer.Option(..., "--ledgers", help="Folder with one sub-folder per site holding ledger.jsonl and "
                                                        "site_key.pub (or SITE.jsonl with SITE.pub)."),
    out: Path = typer.Option(Path("privacy-audit.html"), "--out", help="The HTML report to write (self-contained)."),
    output_format: OutputFormat = format_option("table, or json (one object on stdout: the report path and each site's "
                                                "verification; the per-site lines then go to stderr)."),
) -> None:
    """Write one HTML page: each site's epsilon over time against its budget, runs, verification; exit 1 unless all verify."""
    from semiofed.common.audit.report import audit_site, build_report, find_site_ledgers
    from semiofed.common.reporting.html import write_html

    console = Console(stderr=output_format is OutputFormat.json)
    sites = find_site_ledgers(ledgers)
    results = []
    for site in sites:
        verification = audit_site(site)
        results.append((site, verification))
        state = "[green]verified[/]" if verification.ok else f"[red]NOT VERIFIED ({len(verification.problems)} problems)[/]"
        console.print(f"{site.name}: {len(verification.entries)} entries, {state}", highlight=False)
    write_html(out, build_report(results))
    summary = {"report": str(out), "verified": all(v.ok for _, v in results),
               "sites": [{"site": site.name, "entries": len(v.entries), "verified": v.ok,
                          "problems": [str(p) for p in v.problems]} for site, v in results]}
    emit(output_format, summary, lambda: console.print(f"report: {out}"))
    if not all(v.ok for _, v in results):
        raise typer.Exit(1)
