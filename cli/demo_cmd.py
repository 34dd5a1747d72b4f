"""`semiofed demo`: the whole system on phantom seizure videos, with one command."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.cli.progress import progress_bar


def _ensure_models(console: Console) -> None:
    """Verify the model files; fetch the missing ones from their official sources, saying so."""
    from semiofed.common.errors import ModelFileError
    from semiofed.common.models.fetch import fetch_model
    from semiofed.common.models.registry import MODEL_FILES, check_file, model_dir

    directory = model_dir()
    for model in MODEL_FILES.values():
        if not model.required:
            continue
        try:
            check_file(model, directory / model.relpath)
        except ModelFileError:
            console.print(f"fetching {model.key} from {model.url} into {directory}")
            fetch_model(model, directory)


@contextmanager
def _task(description: str, total: int) -> Iterator[Callable[..., None]]:
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _show_flower_line(console: Console) -> Callable[[str], None]:
    """Print the round lines of Flower's log (without its colour codes)."""

    def show(line: str) -> None:
        if "ROUND" in line or "aggregate_" in line or "declin" in line:
            console.print(f"  [dim]{escape(_ANSI.sub('', line).strip())}[/]", highlight=False)

    return show


def demo(
    out: Path = typer.Option(Path("semiofed-demo"), "--out", help="Folder for the videos, sites, coordinator and reports."),
    sites: int = typer.Option(3, "--sites", min=2, max=8, help="Number of hospitals."),
    quick: bool = typer.Option(False, "--quick", help="Fewer, shorter videos and a smaller model (same real pipeline)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic patients."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Federated rounds (default 3; 2 with --quick)."),
    simulation: Optional[bool] = typer.Option(
        None, "--simulation/--deployment",
        help="Flower's simulation engine, or a real local deployment (SuperLink and one SuperNode process per site). "
             "Default: a deployment; the simulation with --quick."),
    output_format: OutputFormat = format_option("table, or json (one summary object on stdout)."),
) -> None:
    """The whole system on phantom seizure videos: de-identify at each hospital, federate with DP and SecAgg+, audit, report.

    Each hospital gets synthetic seizure videos (its own camera set-up and
    case mix) and runs `site init` and `site prepare` (real MediaPipe pose,
    the landmarks the default model reads). The sites then train one
    classifier (a linear head over motion descriptors), starting from a model
    of the public reference seizures, over a real local Flower deployment
    (TLS, site keys, SecAgg+; --quick uses the simulation engine unless
    --deployment), each under its own DP budget, and are compared with
    local-only DP training, the public model alone and a centralised
    non-private model on the same held-out patients (half of every site's
    patients), with 95% intervals.
    Every site's ledger is audited; report.html and report.json are written
    to --out.
    """
    from semiofed.server.demo import MODE_DEPLOY, MODE_SIMULATION, DemoConfig, run_demo
    from semiofed.server.report import REPORT_HTML, REPORT_JSON

    console = Console(stderr=True)
    _ensure_models(console)
    simulation = quick if simulation is None else simulation
    config = DemoConfig(out=out.resolve(), sites=sites, quick=quick, seed=seed,
                        mode=MODE_SIMULATION if simulation else MODE_DEPLOY, rounds=rounds or (2 if quick else 3))
    console.print("federation: " + ("Flower simulation engine (SecAgg+, one virtual SuperNode per site; --deployment for real processes)"
                                    if simulation else "real local deployment (TLS, site keys, SecAgg+, one SuperNode process per site)"))
    report = run_demo(config, _task, on_line=_show_flower_line(console))
    summary = {"out": str(config.out), "seconds": report["seconds"], "report_html": str(config.out / REPORT_HTML),
               "report_json": str(config.out / REPORT_JSON), "final_checkpoint": report["final_checkpoint"],
               "audit_verified": all(a["verified"] for a in report["audit"].values())}
    emit(output_format, summary, lambda: _show_comparison(report, summary, sites))


def _show_comparison(report: dict, summary: dict, sites: int) -> None:
    """The table for people: every model on the same held-out patients, privacy spent, where the report is."""
    from semiofed.server.report import SMALL_TEST_SET, comparison_rows, federation_gain_lines, small_test_set_note

    held_out = len(report["federated"]["y"])
    table = Table(title=f"semiofed demo ({report['seconds']:.0f} s): {held_out} held-out seizures at {sites} hospitals")
    for column in ("model", "privacy", "accuracy", "balanced acc.", "AUROC", "ECE", "bal. acc. 95% CI", "AUROC 95% CI"):
        table.add_column(column)

    def fmt(v: object) -> str:
        if isinstance(v, str):
            return v
        return "-" if v is None or v != v else f"{v:.2f}"  # v != v: NaN (one class only)

    for row in comparison_rows(report):
        table.add_row(row[0], row[1], *[fmt(v) for v in row[2:]])
    Console().print(table)
    for line in federation_gain_lines(report):
        Console().print(line)
    if held_out < SMALL_TEST_SET:
        Console().print(small_test_set_note(held_out), style="dim")
    eps = ", ".join(f"{s} {a['epsilon'][-1]['epsilon_cumulative']:.2f}/{a['epsilon_max']:g}" if a["epsilon"] else f"{s} 0"
                    for s, a in sorted(report["audit"].items()))
    Console().print(f"privacy spent (epsilon/budget): {eps}; audit: "
                    f"{'every ledger verifies' if summary['audit_verified'] else 'VERIFICATION FAILED'}")
    Console().print(f"report: {summary['report_html']} (data: {summary['report_json']})")
