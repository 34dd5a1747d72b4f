"""`semiofed phantom`: generate synthetic, labelled seizure videos with ground truth and site manifests."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.cli.progress import progress_bar
from semiofed.phantom.dataset import (
    GenerateConfig,
    PhantomError,
    check_output_dir,
    plan_dataset,
    render_videos,
    write_dataset_summary,
    write_manifests,
)

app = typer.Typer(help="Synthetic seizure videos (the phantom) for demos, tests and benchmarks.", no_args_is_help=True)


@app.callback()
def _phantom() -> None:
    """Synthetic seizure videos (the phantom) for demos, tests and benchmarks."""


def _range(text: str, what: str, cast: type) -> tuple:
    parts = text.replace(":", "-").split("-")
    try:
        values = [cast(p) for p in parts if p != ""]
    except ValueError:
        raise PhantomError(f"{what} '{text}' is not a number or a range", f"write {what} as N or LO-HI, e.g. 1-4") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise PhantomError(f"{what} '{text}' is not a number or a range", f"write {what} as N or LO-HI, e.g. 1-4")
    return values[0], values[1]


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PhantomError(f"--size '{text}' is not WIDTHxHEIGHT", "write it as e.g. 320x240") from None
    return width, height


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="Output folder: one sub-folder per site with manifest.csv, videos/ and truth/."),
    sites: int = typer.Option(3, "--sites", help="Number of hospitals (sites); their set-ups differ (non-IID)."),
    patients: int = typer.Option(20, "--patients", help="Number of patients over all sites (each belongs to one site)."),
    seizures_per_patient: str = typer.Option("1-4", "--seizures-per-patient", help="Seizures per patient, N or LO-HI."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bytes."),
    duration_s: str = typer.Option("15-180", "--duration-s", help="Seizure duration (onset to offset) in seconds, N or LO-HI."),
    lead_s: str = typer.Option("3-12", "--lead-s", help="Video before the onset in seconds, N or LO-HI."),
    tail_s: str = typer.Option("3-15", "--tail-s", help="Video after the offset (postictal) in seconds, N or LO-HI."),
    fps: float = typer.Option(15.0, "--fps", help="Frames per second."),
    size: str = typer.Option("320x240", "--size", help="Frame size WIDTHxHEIGHT."),
    workers: int = typer.Option(1, "--workers", help="Parallel render processes (the output does not depend on it)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a phantom dataset already in --out."),
    output_format: OutputFormat = format_option("table, or json (one summary object on stdout)."),
) -> None:
    """Write phantom seizure videos (mp4), ground truth (json+npz) and one manifest per site."""
    config = GenerateConfig(
        sites=sites, patients=patients, seizures_per_patient=_range(seizures_per_patient, "--seizures-per-patient", int),
        seed=seed, duration_s=_range(duration_s, "--duration-s", float), lead_s=_range(lead_s, "--lead-s", float),
        tail_s=_range(tail_s, "--tail-s", float), fps=fps, size=_size(size),
    )
    check_output_dir(out, force)
    profiles, videos = plan_dataset(config)
    with progress_bar() as progress:
        task = progress.add_task("rendering phantom videos", total=len(videos))
        render_videos(videos, out, workers=workers, on_rendered=lambda: progress.advance(task))
    manifests = write_manifests(out, videos)
    summary_path = write_dataset_summary(out, config, profiles, videos)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))

    def print_table() -> None:
        console = Console()
        for site in summary["sites"]:
            views = ", ".join(f"{k} {n}" for k, n in site["views"].items() if n)
            console.print(f"{site['site']} ({site['profile']['name']}): {len(site['patients'])} patients, "
                          f"{site['videos']} videos, FOS {site['labels']['FOS']} / TCS {site['labels']['TCS']}; {views}",
                          highlight=False)
        console.print(f"manifests: {', '.join(str(p) for p in manifests)}", highlight=False)

    emit(output_format, {"out": str(out), "manifests": [str(p) for p in manifests], "sites": summary["sites"]}, print_table)
