"""`semiofed demo`: the whole hospital side on synthetic seizure videos, with one command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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


def demo(
    out: Path = typer.Option(Path("semiofed-demo"), "--out", help="Folder for the videos, sites and results."),
    sites: int = typer.Option(3, "--sites", min=1, max=8, help="Number of hospitals."),
    quick: bool = typer.Option(False, "--quick", help="Fewer, shorter videos (same real pipeline)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic patients."),
    output_format: str = typer.Option("table", "--format", help="table or json (summary on stdout)."),
) -> None:
    """Run the hospital side end to end on phantom seizure videos: generate, de-identify, train with DP.

    Each site gets synthetic seizure videos (its own camera set-up and case
    mix), runs `site init` and `site prepare` (real MediaPipe and I3D), and
    trains the seizure classifier locally with patient-level DP-SGD. The
    federated rounds between the sites are not part of this version yet.
    """
    from semiofed.client.local_training import LocalTrainingOptions, train_site
    from semiofed.client.prepare import prepare_site
    from semiofed.client.site import init_site, open_site
    from semiofed.phantom.dataset import GenerateConfig, check_output_dir, plan_dataset, render_video, write_manifests

    console = Console(stderr=True)
    started = time.monotonic()
    _ensure_models(console)
    config = GenerateConfig(
        # enough patients that the smallest site (patient share 0.7 of 1.0) has >= 3 to train, validate, test
        sites=sites, patients=(5 * sites if quick else 8 * sites), seizures_per_patient=(1, 1 if quick else 2),
        seed=seed, duration_s=(15.0, 20.0) if quick else (15.0, 45.0),
    )
    videos_dir = out / "videos"
    check_output_dir(videos_dir, force=True)
    _, planned = plan_dataset(config)
    with progress_bar() as progress:
        task = progress.add_task("rendering phantom seizure videos", total=len(planned))
        for video in planned:
            render_video(video, videos_dir)
            progress.advance(task)
    manifests = sorted(write_manifests(videos_dir, planned))

    results = []
    for manifest in manifests:
        name = manifest.parent.name
        site_dir = out / "sites" / name
        site = open_site(site_dir) if (site_dir / "site.json").exists() else init_site(site_dir, name)
        with progress_bar() as progress:
            rows = sum(1 for _ in manifest.open()) - 1
            task = progress.add_task(f"{name}: de-identifying videos", total=rows)
            outcomes = prepare_site(site, manifest, on_outcome=lambda _o: progress.advance(task))
        failed = [o for o in outcomes if o.status == "failed"]
        with progress_bar() as progress:
            # the noise is chosen to spend half of the site's budget, leaving room for federated rounds
            options = LocalTrainingOptions(epochs=10 if quick else 30, folds=3, seed=seed,
                                           epsilon=site.policy.max_epsilon / 2)
            task = progress.add_task(f"{name}: local DP training", total=options.epochs)
            trained = train_site(site_dir, options, on_epoch=lambda e, _m: progress.update(task, completed=e + 1))
        test = trained.test_metrics
        results.append({
            "site": name, "records": sum(o.status in ("done", "skipped") for o in outcomes), "failed": len(failed),
            "pose_detection": round(sum((o.detection_rate or {}).get("pose", 0) for o in outcomes if o.detection_rate)
                                    / max(1, sum(1 for o in outcomes if o.detection_rate)), 3),
            "patients": trained.n_patients, "epsilon_spent": trained.epsilon_spent, "epsilon_max": trained.epsilon_max,
            "test_balanced_accuracy": test.get("balanced_accuracy"), "test_auroc": test.get("auroc"),
            "checkpoint": str(trained.checkpoint),
        })
    summary = {"out": str(out), "seconds": round(time.monotonic() - started, 1), "sites": results,
               "federation": "not run: local-only training at each site in this version"}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if output_format == "json":
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"semiofed demo ({summary['seconds']:.0f} s): local DP training at each site")
    for column in ("site", "records", "failed", "pose found", "epsilon spent / max", "test bal. acc.", "test AUROC"):
        table.add_column(column)
    for r in results:
        fmt = lambda v: "-" if v is None or v != v else f"{v:.2f}"  # noqa: E731 - v != v: NaN (one class in the test fold)
        table.add_row(r["site"], str(r["records"]), str(r["failed"]), f"{r['pose_detection']:.0%}",
                      f"{fmt(r['epsilon_spent'])} / {fmt(r['epsilon_max'])}", fmt(r["test_balanced_accuracy"]),
                      fmt(r["test_auroc"]))
    Console().print(table)
    Console().print(f"results: {out / 'demo.json'}")
