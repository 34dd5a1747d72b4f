"""`semiofed site train` and `semiofed site budget`: local training under the site's privacy budget."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.cli.progress import progress_bar
from semiofed.common.constants import STREAMS, TEMPORAL_MODELS
from semiofed.cli.model_options import descriptors_option
from semiofed.common.learning.spec import DEFAULT_MODEL, DEFAULT_SCHEDULE
from semiofed.common.errors import SemiofedError

SiteDirOption = typer.Option(..., "--site-dir", help="The site directory made by `semiofed site init`.")


def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _class_weights(text: Optional[str]) -> str | tuple[float, ...] | None:
    if text is None or text == "balanced":
        return text
    try:
        return tuple(float(t) for t in _split(text))
    except ValueError:
        raise SemiofedError(f"--class-weights '{text}' is not a list of numbers", "use e.g. 1,2 or 'balanced' (with --no-dp)") from None


def train(
    site_dir: Path = SiteDirOption,
    epochs: int = typer.Option(DEFAULT_SCHEDULE.epochs, "--epochs", help="Passes over the training patients (an epoch is 1/q steps)."),
    batch_patients: int = typer.Option(DEFAULT_SCHEDULE.batch_patients, "--batch-patients", help="Expected patients per step (Poisson rate q = this / patients)."),
    lr: float = typer.Option(DEFAULT_SCHEDULE.lr, "--lr", help="Learning rate of the optimiser (--optimizer)."),
    optimizer: str = typer.Option(DEFAULT_SCHEDULE.optimizer, "--optimizer", help="adam, or sgd (momentum 0.9)."),
    dp: bool = typer.Option(True, "--dp/--no-dp", help="Differential privacy per patient (default on). --no-dp is NOT private."),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier", help="Gaussian noise sigma (default: the site policy's minimum)."),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="Site epsilon to reach after this run; semiofed picks the noise."),
    labels: str = typer.Option(",".join(DEFAULT_MODEL.labels), "--labels", help="Comma-separated label set, in output order."),
    streams: str = typer.Option(",".join(DEFAULT_MODEL.streams), "--streams", help=f"Comma-separated input streams: {', '.join(STREAMS)}."),
    temporal: str = typer.Option(DEFAULT_MODEL.temporal, "--temporal", help=f"Temporal model: {', '.join(TEMPORAL_MODELS)}."),
    hidden: int = typer.Option(DEFAULT_MODEL.hidden, "--hidden", help="Hidden units of the temporal model."),
    segments: int = typer.Option(DEFAULT_MODEL.n_segments, "--segments", help="Segments sampled per seizure (Beta-jittered when training)."),
    descriptors: str = descriptors_option(),
    class_weights: Optional[str] = typer.Option(None, "--class-weights", help="Public per-label loss weights (e.g. 1,2), or 'balanced' with --no-dp."),
    folds: int = typer.Option(5, "--folds", help="Patient-grouped folds: one test, one validation, the rest training."),
    test_fold: int = typer.Option(0, "--test-fold", help="Which fold is held out as the test set."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and initialisation (under DP, patient sampling and noise come from OS entropy)."),
    name: Optional[str] = typer.Option(None, "--name", help="Checkpoint directory name under the site's checkpoints/."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Train the seizure classifier on this site's records only, with patient-level DP by default."""
    from semiofed.client.training.local import LocalTrainingOptions, train_site

    err = Console(stderr=True)
    if not dp:
        err.print("[bold red]WARNING: --no-dp: this training is NOT differentially private. "
                  "The model may reveal individual patients; do not share it outside the site.[/]")
    options = LocalTrainingOptions(
        epochs=epochs, batch_patients=batch_patients, lr=lr, optimizer=optimizer, dp=dp, noise_multiplier=noise_multiplier,
        epsilon=epsilon, labels=_split(labels), streams=_split(streams), temporal=temporal, hidden=hidden,
        n_segments=segments, descriptors=_split(descriptors), class_weights=_class_weights(class_weights), folds=folds, test_fold=test_fold,
        seed=seed, run_name=name,
    )
    with progress_bar() as progress:
        task = progress.add_task("training", total=epochs)
        result = train_site(site_dir, options, on_epoch=lambda epoch, _: progress.update(task, completed=epoch + 1))
    report = {
        "checkpoint": str(result.checkpoint), "dp": result.dp, "epsilon_spent": result.epsilon_spent,
        "epsilon_max": result.epsilon_max, "delta": result.delta, "noise_multiplier": result.noise_multiplier,
        "sample_rate": result.sample_rate, "steps": result.steps, "temperature": result.temperature,
        "n_patients": result.n_patients, "test": result.test_metrics, "seconds": round(result.seconds, 1),
    }

    def print_table() -> None:
        out = Console()
        out.print(f"checkpoint: {result.checkpoint}")
        if result.dp:
            out.print(f"privacy: epsilon spent {result.epsilon_spent:.3f} of {result.epsilon_max:g} (delta {result.delta:g}, "
                      f"per patient), sigma {result.noise_multiplier:.3f}, q {result.sample_rate:.3f}, {result.steps} steps")
        else:
            out.print("[bold red]privacy: none (--no-dp)[/]")
        m = result.test_metrics
        out.print(f"test ({result.n_patients['test']} patients, {m['n_seizures']} seizures): accuracy {m['accuracy']:.3f}, "
                  f"balanced {m['balanced_accuracy']:.3f}, F1 {m['f1_macro']:.3f}, AUROC {m['auroc']:.3f}, ECE {m['ece']:.3f}")
        out.print(f"confusion matrix (rows true {', '.join(options.labels)}): {m['confusion_matrix']}")

    emit(output_format, report, print_table)


def budget(
    site_dir: Path = SiteDirOption,
    output_format: OutputFormat = format_option(),
) -> None:
    """Show the privacy budget of this site: epsilon spent, maximum and remaining."""
    from semiofed.client.training.local import site_budget

    summary = site_budget(site_dir)
    emit(output_format, summary, lambda: Console().print(
        f"epsilon spent {summary['epsilon_spent']:.3f} of {summary['epsilon_max']:g}, remaining "
        f"{summary['epsilon_remaining']:.3f} (delta {summary['delta']:g}, {summary['accountant']} accountant, "
        f"unit: {summary['privacy_unit']}; {summary['steps']} steps in {summary['runs']} runs)"
    ))


def _json_safe(value: object) -> object:
    """NaN (e.g. AUROC of a test fold with one class) becomes null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def cv(
    site_dir: Path = SiteDirOption,
    folds: int = typer.Option(5, "--folds", help="Patient-grouped folds: each is the test set once, the next one validates."),
    epochs: int = typer.Option(DEFAULT_SCHEDULE.epochs, "--epochs", help="Passes over each fold's training patients (an epoch is 1/q steps)."),
    batch_patients: int = typer.Option(DEFAULT_SCHEDULE.batch_patients, "--batch-patients", help="Expected patients per step (Poisson rate q = this / patients)."),
    lr: float = typer.Option(DEFAULT_SCHEDULE.lr, "--lr", help="Learning rate of the optimiser (--optimizer)."),
    optimizer: str = typer.Option(DEFAULT_SCHEDULE.optimizer, "--optimizer", help="adam, or sgd (momentum 0.9)."),
    dp: bool = typer.Option(True, "--dp/--no-dp", help="Differential privacy per patient (default on). --no-dp is NOT private."),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier", help="Gaussian noise sigma of every fold (default: the site policy's minimum)."),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="Site epsilon to reach after ALL folds; semiofed picks one noise for all of them."),
    labels: str = typer.Option(",".join(DEFAULT_MODEL.labels), "--labels", help="Comma-separated label set, in output order."),
    streams: str = typer.Option(",".join(DEFAULT_MODEL.streams), "--streams", help=f"Comma-separated input streams: {', '.join(STREAMS)}."),
    temporal: str = typer.Option(DEFAULT_MODEL.temporal, "--temporal", help=f"Temporal model: {', '.join(TEMPORAL_MODELS)}."),
    hidden: int = typer.Option(DEFAULT_MODEL.hidden, "--hidden", help="Hidden units of the temporal model."),
    segments: int = typer.Option(DEFAULT_MODEL.n_segments, "--segments", help="Segments sampled per seizure (Beta-jittered when training)."),
    descriptors: str = descriptors_option(),
    class_weights: Optional[str] = typer.Option(None, "--class-weights", help="Public per-label loss weights (e.g. 1,2), or 'balanced' with --no-dp."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds and initialisation (under DP, patient sampling and noise come from OS entropy)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Cross-validate over patient folds (every patient tested once); under DP every fold is charged to the budget."""
    from rich.table import Table

    from semiofed.client.training.cross_validation import cross_validate
    from semiofed.client.training.local import LocalTrainingOptions

    err = Console(stderr=True)
    if not dp:
        err.print("[bold red]WARNING: --no-dp: this training is NOT differentially private. "
                  "The models may reveal individual patients; do not share them outside the site.[/]")
    options = LocalTrainingOptions(
        epochs=epochs, batch_patients=batch_patients, lr=lr, optimizer=optimizer, dp=dp, noise_multiplier=noise_multiplier,
        epsilon=epsilon, labels=_split(labels), streams=_split(streams), temporal=temporal, hidden=hidden,
        n_segments=segments, descriptors=_split(descriptors), class_weights=_class_weights(class_weights), folds=folds, seed=seed,
    )
    with progress_bar() as progress:
        task = progress.add_task("cross-validation", total=folds * epochs)
        result = cross_validate(site_dir, options,
                                on_epoch=lambda fold, epoch, _: progress.update(task, completed=fold * epochs + epoch + 1))
    report = {
        "dp": result.dp, "folds": options.folds, "noise_multiplier": result.noise_multiplier, "delta": result.delta,
        "epsilon_before": result.epsilon_before, "epsilon_spent": result.epsilon_spent, "epsilon_max": result.epsilon_max,
        "per_fold": [{"fold": f.fold, "n_patients": f.n_patients, "n_seizures": f.n_seizures, "sample_rate": f.sample_rate,
                      "steps": f.steps, "temperature": f.temperature, "test": f.test_metrics} for f in result.folds],
        "pooled": result.pooled_metrics, "seconds": round(result.seconds, 1),
    }

    def print_table() -> None:
        out = Console()
        if result.dp:
            out.print(f"privacy: {options.folds} folds took epsilon from {result.epsilon_before:.3f} to "
                      f"{result.epsilon_spent:.3f} of {result.epsilon_max:g} (delta {result.delta:g}, per patient), "
                      f"sigma {result.noise_multiplier:.3f}")
        else:
            out.print("[bold red]privacy: none (--no-dp)[/]")
        table = Table(title=f"patient-grouped {options.folds}-fold cross-validation (test metrics after temperature scaling)")
        for column in ("fold", "patients train/val/test", "test seizures", "accuracy", "balanced acc.", "F1", "AUROC", "ECE", "T"):
            table.add_column(column, justify="right")
        fmt = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731 - v != v: NaN (one class in the fold)
        for f in result.folds:
            m, n = f.test_metrics, f.n_patients
            table.add_row(str(f.fold), f"{n['train']}/{n['validation']}/{n['test']}", str(m["n_seizures"]), fmt(m["accuracy"]),
                          fmt(m["balanced_accuracy"]), fmt(m["f1_macro"]), fmt(m["auroc"]), fmt(m["ece"]), f"{f.temperature:.2f}")
        m = result.pooled_metrics
        table.add_row("pooled", "", str(m["n_seizures"]), fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["f1_macro"]),
                      fmt(m["auroc"]), fmt(m["ece"]), "", style="bold")
        out.print(table)
        out.print(f"pooled confusion matrix (rows true {', '.join(options.labels)}): {m['confusion_matrix']}")

    emit(output_format, _json_safe(report), print_table)
