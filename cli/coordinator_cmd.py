"""`semiofed coordinator`: the federation's CA, enrolled sites, the SuperLink, and federated runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.cli.model_options import (descriptors_option, dp_mode_option, hidden_option, labels_option,
                                        segments_option, streams_option, temporal_option)
from semiofed.common.federation.run_config import STRATEGIES, STRATEGY_FEDAVG, FederationConfig

_RUN = FederationConfig()  # the run config's defaults (model shape from DEFAULT_MODEL)

app = typer.Typer(help="Run the federation: certificates, site enrolment, the Flower SuperLink and federated runs.",
                  no_args_is_help=True)
DirOption = typer.Option(..., "--dir", help="The coordinator directory made by `semiofed coordinator init`.")


def _coordinator(directory: Path) -> Any:
    from semiofed.server.coordinator import Coordinator

    return Coordinator(directory)


@app.command()
def init(
    directory: Path = DirOption,
    san: List[str] = typer.Option([], "--san", help="Host name or IP the sites use to reach the SuperLink (repeat); localhost is always included."),
    port: int = typer.Option(9092, "--port", help="HTTPS port of the SuperLink (sites and `flwr`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the SuperLink listens on (0.0.0.0 for every interface)."),
    superlink_state: str = typer.Option("database", "--superlink-state", help="database: runs and registered sites survive a restart; memory: rounds about twice as fast, a restart forgets them (sites join again)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Create a coordinator directory: a private CA and the SuperLink's TLS certificate."""
    coordinator = _coordinator(directory)
    state = coordinator.init(sans=san, host=host, port=port, superlink_state=superlink_state)
    emit(output_format, {"dir": str(coordinator.root), "ca_certificate": str(coordinator.tls.ca_certificate),
                         "sans": list(state.sans)},
         lambda: Console().print(f"coordinator directory {coordinator.root}: CA {coordinator.tls.ca_certificate} "
                                 f"(give it to the sites), certificate for {', '.join(state.sans)}"))


@app.command()
def enroll(
    site_public_key: Path = typer.Argument(..., help="The site's site_key.pub (ECDSA P-384, OpenSSH)."),
    directory: Path = DirOption,
    name: Optional[str] = typer.Option(None, "--name", help="Site name (default: the key's comment, else the file name)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Enroll a site's public key: only enrolled sites may join (registered with the SuperLink now or at start)."""
    coordinator = _coordinator(directory)
    site = coordinator.enroll(site_public_key, name)
    registered = coordinator.state().registered.get(site)
    emit(output_format, {"site": site, "node_id": registered},
         lambda: Console().print(f"enrolled site {site}" + (f" (registered as node {registered})" if registered else
                                                              " (registered when the SuperLink starts)")))


@app.command()
def start(
    directory: Path = DirOption,
    port: Optional[int] = typer.Option(None, "--port", help="HTTPS port (default: the one given at init)."),
    host: Optional[str] = typer.Option(None, "--host", help="Listen address (default: the one given at init)."),
    foreground: bool = typer.Option(False, "--foreground", help="Stay attached until interrupted (for services and containers)."),
    output_format: OutputFormat = format_option("table, or json (one object on stdout as soon as the SuperLink runs)."),
) -> None:
    """Start the SuperLink on loopback (TLS, site authentication, persistent database, no run-time package installs)
    and the gateway that serves the sites the Fleet API only, on the coordinator's address."""
    import time

    coordinator = _coordinator(directory)
    pid = coordinator.start(port=port, host=host)
    state = coordinator.state()
    emit(output_format, {"pid": pid, "host": state.host, "port": state.port, "registered_sites": len(state.registered),
                         "log": str(coordinator.log_file)},
         lambda: Console().print(f"SuperLink running (pid {pid}), sites' gateway on {state.host}:{state.port}; "
                                 f"{len(state.registered)} site(s) registered; log {coordinator.log_file}"))
    if foreground:
        import signal

        # a service manager stops us with SIGTERM: take the SuperLink down with us
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while coordinator.running() and coordinator.gateway_running():
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            coordinator.stop()


@app.command()
def stop(directory: Path = DirOption, output_format: OutputFormat = format_option()) -> None:
    """Stop the SuperLink and its ServerApp processes."""
    stopped = _coordinator(directory).stop()
    emit(output_format, {"stopped": stopped},
         lambda: Console().print("SuperLink stopped" if stopped else "the SuperLink was not running"))


@app.command("public-model")
def public_model(
    directory: Path = DirOption,
    reference: Path = typer.Option(..., "--reference", help="A store of public reference seizures (`semiofed site init "
                                   "--public-reference` and `site prepare` on published, consented videos only)."),
    labels: str = labels_option(),
    streams: str = streams_option(),
    temporal: str = temporal_option(),
    hidden: int = hidden_option(),
    segments: int = segments_option(),
    descriptors: str = descriptors_option(),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and batches (public data: no secret to keep)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Train the classifier on public reference seizures alone (no DP, no site data), as a run's initial model.

    Give it the model options the run will use (`--temporal`, `--streams`, ...): `run --initial-model` refuses a
    model of another shape.

    Start a run from it with `coordinator run --initial-model DIR/public-model`: under patient-level DP the sites'
    rounds then adapt a model that already separates the seizure types instead of starting from random weights.
    """
    from semiofed.client.training.calibrate import public_reference_records
    from semiofed.client.training.local import group_patients
    from semiofed.common.learning.classifier import classifier_config
    from semiofed.common.learning.public_model import public_patients, save_public_model, train_public_model

    coordinator = _coordinator(directory)
    config = FederationConfig(labels=labels, streams=streams, temporal=temporal, hidden=hidden, n_segments=segments,
                              descriptors=descriptors, seed=seed)
    records = public_reference_records(reference, config.model_spec.labels)
    seizures = [s for p in group_patients(records, config.model_spec.labels, config.model_spec.streams) for s in p.seizures]
    model = train_public_model(public_patients(seizures), classifier_config(config), lr=config.lr,
                               optimizer=config.optimizer, batch_patients=config.batch_patients, seed=seed)
    path = save_public_model(coordinator.root / "public-model", model, len(seizures), str(reference.resolve()))
    emit(output_format, {"checkpoint": str(path), "seizures": len(seizures)},
         lambda: Console().print(f"public model of {len(seizures)} reference seizures: {path} "
                                 f"(start a run from it with --initial-model {path})"))


@app.command()
def run(
    directory: Path = DirOption,
    rounds: int = typer.Option(_RUN.rounds, "--rounds", help="Federated rounds."),
    min_sites: int = typer.Option(2, "--min-sites", help="A round runs only if at least this many sites can afford it."),
    strategy: str = typer.Option(STRATEGY_FEDAVG, "--strategy", help=f"Aggregation: {', '.join(STRATEGIES)}."),
    local_epochs: int = typer.Option(_RUN.local_epochs, "--local-epochs", help="Local epochs per round at each site."),
    batch_patients: int = typer.Option(_RUN.batch_patients, "--batch-patients", help="Expected patients per DP step at each site."),
    lr: float = typer.Option(_RUN.lr, "--lr", help="Local learning rate of the optimiser (--optimizer)."),
    optimizer: str = typer.Option(_RUN.optimizer, "--optimizer", help="adam, or sgd (momentum 0.9)."),
    secure_aggregation: bool = typer.Option(True, "--secure-aggregation/--no-secure-aggregation", help="SecAgg+: the coordinator sees only the sum of updates."),
    round_timeout: float = typer.Option(900.0, "--round-timeout", help="Seconds a round waits for sites."),
    site_epsilon: float = typer.Option(0.0, "--site-epsilon", help="Ask each site to spend at most this epsilon in this run (sites may spend less)."),
    noise_multiplier: float = typer.Option(0.0, "--noise-multiplier", help="Ask every site for this DP noise (0: each site chooses; a site refuses less than its minimum)."),
    labels: str = labels_option(),
    streams: str = streams_option(),
    temporal: str = temporal_option(),
    hidden: int = hidden_option(),
    segments: int = segments_option(),
    descriptors: str = descriptors_option(),
    dp_mode: str = dp_mode_option(),
    folds: int = typer.Option(5, "--folds", help="Patient folds at each site: one test, one validation, the rest training (>= 3)."),
    wait_for_sites: float = typer.Option(60.0, "--wait-for-sites", help="Seconds to wait for --min-sites enrolled sites to be online before the run starts; then it fails naming the missing ones."),
    evaluate_every: int = typer.Option(0, "--evaluate-every", help="Evaluate at the sites every k rounds and after the last (0: after the last only); each evaluation is a DP release a site charges to its budget."),
    resume: bool = typer.Option(False, "--resume", help="Start from the last global checkpoint of this coordinator."),
    initial_model: Optional[Path] = typer.Option(
        None, "--initial-model", help="Start from this checkpoint instead of random weights, e.g. the model of public reference "
        "seizures that `coordinator public-model` writes (no site's data, no privacy cost)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Launch a federated run on the running SuperLink and stream its progress."""
    coordinator = _coordinator(directory)
    resume_from = ""
    if resume and initial_model is not None:
        from semiofed.common.errors import SemiofedError

        raise SemiofedError("--resume and --initial-model both choose the initial weights", "give one of them")
    if initial_model is not None:
        resume_from = str(Path(initial_model).resolve())
    if resume:
        latest = coordinator.latest_checkpoint()
        if latest is None:
            from semiofed.common.errors import SemiofedError

            raise SemiofedError("--resume: this coordinator has no global checkpoint yet", "run once without --resume")
        resume_from = str(latest)
    config = FederationConfig(rounds=rounds, min_sites=min_sites, strategy=strategy, local_epochs=local_epochs,
                              batch_patients=batch_patients, lr=lr, optimizer=optimizer, secure_aggregation=secure_aggregation,
                              round_timeout=round_timeout, site_epsilon=site_epsilon, noise_multiplier=noise_multiplier,
                              labels=labels, streams=streams,
                              temporal=temporal, hidden=hidden, n_segments=segments, descriptors=descriptors, dp_mode=dp_mode, folds=folds,
                              evaluate_every=evaluate_every, resume_from=resume_from)
    if initial_model is not None:
        _check_initial_model(initial_model, config)
    err = Console(stderr=True)
    result = coordinator.run(config, on_line=lambda line: err.print(line, markup=False, highlight=False) if line.strip() else None,
                             wait_for_sites=wait_for_sites)
    emit(output_format, result, lambda: Console().print(_run_table(result)), sort_keys=True)
    if result.get("status") != "finished":
        raise typer.Exit(1)


def _check_initial_model(path: Path, config: FederationConfig) -> None:
    """Refuse, before anything starts, an initial model that is missing, changed or of another shape than the run's."""
    from semiofed.common.errors import SemiofedError
    from semiofed.common.learning.checkpoint import load_checkpoint
    from semiofed.common.learning.classifier import classifier_config

    checkpoint = load_checkpoint(path)  # a missing or corrupt checkpoint fails here
    if checkpoint.config != classifier_config(config):
        raise SemiofedError(f"--initial-model {path} is a {checkpoint.config.temporal} model of "
                            f"{','.join(checkpoint.config.streams)}, not the shape this run trains",
                            "make it with the run's model options (`coordinator public-model --temporal ... --streams ...`)")


def _run_table(run: dict[str, Any]) -> Table:
    table = Table(title=f"run {run.get('run_id')}: {run.get('status')}")
    for column in ("round", "sites trained", "declined", "balanced acc.", "accuracy", "epsilon spent per site"):
        table.add_column(column)
    for r in run.get("rounds", []):
        agg = r.get("aggregate", {})
        eps = ", ".join(f"{s} {v.get('epsilon_spent', float('nan')):.2f}" for s, v in sorted(r.get("fit", {}).items()))
        table.add_row(str(r["round"]), str(len(r.get("fit", {}))), ", ".join(sorted(r.get("declined", {}))) or "-",
                      f"{agg.get('balanced_accuracy', float('nan')):.3f}", f"{agg.get('accuracy', float('nan')):.3f}", eps or "-")
    return table


@app.command()
def status(directory: Path = DirOption, output_format: OutputFormat = format_option()) -> None:
    """The SuperLink's state, enrolled sites (online or not) and the progress of every run."""
    coordinator = _coordinator(directory)
    info, runs = coordinator.info(), coordinator.runs()
    sites = coordinator.site_status() if info["running"] else {}

    def print_table() -> None:
        console = Console()
        console.print(f"SuperLink: {'running (pid %s)' % info['pid'] if info['running'] else 'stopped'} at "
                      f"{info['superlink']}; sites enrolled: {', '.join(info['enrolled_sites']) or 'none'}")
        if sites:
            console.print("sites on the SuperLink: " + ", ".join(f"{name} {state}" for name, state in sites.items()))
        for r in runs:
            console.print(_run_table(r))

    emit(output_format, {"superlink": info, "sites": sites, "runs": runs}, print_table, sort_keys=True)


@app.command()
def info(directory: Path = DirOption, output_format: OutputFormat = format_option()) -> None:
    """Paths and addresses: the CA certificate sites need, the database, the checkpoints directory."""
    data = _coordinator(directory).info()

    def print_table() -> None:
        for key, value in data.items():
            Console().print(f"{key}: {value}", highlight=False)

    emit(output_format, data, print_table, sort_keys=True)


@app.command()
def simulate(
    sites_dir: Path = typer.Option(..., "--sites-dir", help="A folder of site directories (one virtual SuperNode each)."),
    rounds: int = typer.Option(_RUN.rounds, "--rounds", help="Federated rounds."),
    out: Path = typer.Option(Path("federation"), "--out", help="Where run.json and the checkpoints go."),
    min_sites: int = typer.Option(2, "--min-sites", help="A round runs only if at least this many sites can afford it."),
    strategy: str = typer.Option(STRATEGY_FEDAVG, "--strategy", help=f"Aggregation: {', '.join(STRATEGIES)}."),
    local_epochs: int = typer.Option(_RUN.local_epochs, "--local-epochs", help="Local epochs per round."),
    secure_aggregation: bool = typer.Option(True, "--secure-aggregation/--no-secure-aggregation", help="SecAgg+ (on by default)."),
    temporal: str = temporal_option(),
    hidden: int = hidden_option(),
    segments: int = segments_option(),
    descriptors: str = descriptors_option(),
    dp_mode: str = dp_mode_option(),
    batch_patients: int = typer.Option(_RUN.batch_patients, "--batch-patients", help="Expected patients per DP step at each site."),
    folds: int = typer.Option(5, "--folds", help="Patient folds at each site (>= 3)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Run the same federation in Flower's simulation engine, one virtual SuperNode per site store."""
    from semiofed.common.version import semiofed_version
    from semiofed.server.run_log import read_run
    from semiofed.server.federation.simulation import simulate as run_simulation

    config = FederationConfig(rounds=rounds, min_sites=min_sites, strategy=strategy, local_epochs=local_epochs,
                              secure_aggregation=secure_aggregation, temporal=temporal, hidden=hidden, n_segments=segments,
                              descriptors=descriptors, dp_mode=dp_mode,
                              batch_patients=batch_patients, folds=folds, checkpoints_dir=str(out.resolve()),
                              semiofed_version=semiofed_version())
    final = run_simulation(sites_dir, config)
    result = read_run(final.parent)

    def print_table() -> None:
        Console().print(_run_table(result))
        Console().print(f"final model: {final}")

    emit(output_format, result, print_table, sort_keys=True)
