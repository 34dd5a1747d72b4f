"""`semiofed models`: fetch, verify and self-test the model files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.cli.progress import progress_bar
from semiofed.common.errors import ModelFileError
from semiofed.common.models.fetch import fetch_model
from semiofed.common.models.registry import MODEL_FILES, check_file, model_dir

app = typer.Typer(help="Fetch, verify and self-test the model files (MediaPipe, I3D, R(2+1)D).", no_args_is_help=True)

ModelDirOption = typer.Option(
    None, "--model-dir", help="Model directory (default: $SEMIOFED_MODEL_DIR, else the user cache dir)."
)


@app.command()
def fetch(
    model_dir_opt: Optional[Path] = ModelDirOption,
    mirror: Optional[Path] = typer.Option(
        None, "--from", help="Copy from a local model directory (same layout) instead of the network."
    ),
    force: bool = typer.Option(False, "--force", help="Fetch again even if a verified file is present."),
    include_optional: bool = typer.Option(
        False, "--include-optional", help="Also fetch optional models (torchvision R(2+1)D-18)."
    ),
    output_format: OutputFormat = format_option("table, or json (one object on stdout: each model's path, action or error)."),
) -> None:
    """Download every model file from its official source and verify its sha256; exit 1 if one fails."""
    console = Console(stderr=output_format is OutputFormat.json)
    rows = []
    with progress_bar() as progress:
        for model in MODEL_FILES.values():
            if not model.required and not include_optional:
                continue
            task = progress.add_task(f"{model.key}", total=model.size)
            try:
                path, action = fetch_model(
                    model, model_dir_opt, mirror=mirror, force=force,
                    progress=lambda done, total, t=task: progress.update(t, completed=done, total=total),
                )
                progress.update(task, completed=model.size or 1, total=model.size or 1)
                rows.append({"model": model.key, "path": str(path), "action": action, "error": ""})
                console.print(f"{model.key}: {action} {path}")
            except ModelFileError as exc:
                rows.append({"model": model.key, "path": "", "action": "failed", "error": str(exc)})
                console.print(f"[red]{model.key}: {exc}[/]", highlight=False)
    failures = sum(r["action"] == "failed" for r in rows)
    emit(output_format, {"models": rows, "failed": failures}, lambda: None)
    if failures:
        raise typer.Exit(1)


@app.command()
def verify(
    model_dir_opt: Optional[Path] = ModelDirOption,
    output_format: OutputFormat = format_option(),
) -> None:
    """Check the size and sha256 of every model file; exit 1 if a required one fails."""
    directory = model_dir(model_dir_opt)
    rows = []
    for model in MODEL_FILES.values():
        path = directory / model.relpath
        try:
            check_file(model, path)
            status, detail = "ok", ""
        except ModelFileError as exc:
            status = "missing" if not path.exists() else "bad"
            detail = str(exc)
        rows.append({"model": model.key, "required": model.required, "status": status,
                     "path": str(path), "error": detail})

    def print_table() -> None:
        table = Table(title=f"model files in {directory}")
        for column in ("model", "required", "status", "error"):
            table.add_column(column)
        for row in rows:
            colour = "green" if row["status"] == "ok" else ("yellow" if not row["required"] else "red")
            table.add_row(row["model"], "yes" if row["required"] else "optional",
                          f"[{colour}]{row['status']}[/]", row["error"])
        Console().print(table)

    emit(output_format, rows, print_table)
    if any(r["status"] != "ok" and r["required"] for r in rows):
        raise typer.Exit(1)


@app.command()
def selftest(
    video: Path = typer.Argument(..., exists=True, dir_okay=False, help="Any video clip; its frames are spread evenly over the whole clip."),
    model_dir_opt: Optional[Path] = ModelDirOption,
    stcnn: str = typer.Option("i3d", "--stcnn", help="Snippet encoder to test: i3d or r2plus1d."),
    top: int = typer.Option(5, "--top", min=1, max=400, help="How many Kinetics labels to show."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Classify a clip into Kinetics-400 actions with an STCNN, to check the weights work."""
    from semiofed.common.models.stcnn import kinetics_top_k, load_stcnn

    encoder = load_stcnn(stcnn, model_dir_opt)
    ranked = kinetics_top_k(encoder, video, k=top)

    def print_table() -> None:
        table = Table(title=f"{encoder.name} on {video.name} ({encoder.classify_frames} frames)")
        table.add_column("rank", justify="right")
        table.add_column("Kinetics-400 label")
        table.add_column("probability", justify="right")
        for rank, (label, p) in enumerate(ranked, 1):
            table.add_row(str(rank), label, f"{p:.3f}")
        Console().print(table)

    emit(output_format, {"video": str(video), "stcnn": encoder.name, "frames": encoder.classify_frames,
                         "top": [{"label": label, "probability": p} for label, p in ranked]}, print_table)
