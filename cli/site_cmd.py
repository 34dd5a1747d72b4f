"""`semiofed site`: what a hospital runs — init, prepare, show, info."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.cli.progress import progress_bar
from semiofed.client.deid.landmark_quality import POOR_TRACKING
from semiofed.client.site import init_site, open_site, tighten_policy
from semiofed.client.store import list_records
from semiofed.common.constants import DEFAULT_DEID_STREAMS, DEID_STREAMS, STCNN_INPUT_PATIENT
from semiofed.common.privacy.policy import PrivacyPolicy

app = typer.Typer(
    help="Hospital site: create the site, de-identify its seizure videos into records, inspect the store.",
    no_args_is_help=True,
)

SiteDir = typer.Option(..., "--site-dir", help="The site directory (keys, policy, record store, ledger).")


@app.command("init")
def init(
    site_dir: Path = SiteDir,
    site_id: str = typer.Option(..., "--site-id", help="A short name for this hospital, e.g. hospital-a."),
    max_epsilon: float = typer.Option(PrivacyPolicy.max_epsilon, "--max-epsilon",
                                      help="Total privacy budget (epsilon) over the life of this site's data."),
    delta: float = typer.Option(PrivacyPolicy.target_delta, "--delta", help="Target delta of the privacy guarantee."),
    min_noise: float = typer.Option(PrivacyPolicy.min_noise_multiplier, "--min-noise-multiplier",
                                    help="The least DP-SGD noise this site accepts."),
    clipping_norm: float = typer.Option(PrivacyPolicy.clipping_norm, "--clipping-norm",
                                        help="Per-patient gradient clipping norm."),
    distributed_dp_sites: int = typer.Option(0, "--distributed-dp-sites",
                                             help="Take part in distributed-DP rounds summed under SecAgg+ over at least "
                                                  "this many sites (0: local DP only)."),
    distributed_dp_colluders: int = typer.Option(1, "--distributed-dp-colluders",
                                                 help="Other sites that may collude with the coordinator in such a round."),
    evaluation_release: str = typer.Option(PrivacyPolicy.evaluation_release, "--evaluation-release",
                                           help="What a federated evaluation releases: noisy (charged DP release), "
                                                "exact (declared public by this policy) or none."),
    max_evaluations_per_run: int = typer.Option(PrivacyPolicy.max_evaluations_per_run, "--max-evaluations-per-run",
                                                help="Most federated evaluations this site makes per run."),
    require_secure_aggregation: bool = typer.Option(False, "--require-secure-aggregation/--no-require-secure-aggregation",
                                                    help="Answer train messages only inside SecAgg+ (threshold at least "
                                                         "--min-secure-aggregation-threshold)."),
    min_secure_aggregation_threshold: int = typer.Option(PrivacyPolicy.min_secure_aggregation_threshold,
                                                         "--min-secure-aggregation-threshold",
                                                         help="The least SecAgg+ reconstruction threshold accepted."),
    public_reference: bool = typer.Option(False, "--public-reference",
                                          help="This store will hold only public, consented seizure videos (a public "
                                               "reference), never a hospital's own patients: a model trained on it "
                                               "without DP may leave it (`coordinator public-model`)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Create a site: signing key pair, pseudonymisation secret, privacy policy, empty store."""
    policy = PrivacyPolicy(target_delta=delta, max_epsilon=max_epsilon,
                           min_noise_multiplier=min_noise, clipping_norm=clipping_norm,
                           distributed_dp_sites=distributed_dp_sites, distributed_dp_colluders=distributed_dp_colluders,
                           evaluation_release=evaluation_release, max_evaluations_per_run=max_evaluations_per_run,
                           require_secure_aggregation=require_secure_aggregation,
                           min_secure_aggregation_threshold=min_secure_aggregation_threshold)
    site = init_site(site_dir, site_id, policy, public_reference=public_reference)

    def print_table() -> None:
        console = Console()
        console.print(f"site [bold]{site.site_id}[/] created in {site.layout.root}")
        console.print(f"public key (give it to the coordinator and the auditor): {site.layout.public_key}")
        console.print(f"privacy budget: epsilon {policy.max_epsilon:g}, delta {policy.target_delta:g}")

    emit(output_format, {"site_id": site.site_id, "site_dir": str(site.layout.root.resolve()),
                         "public_key": str(site.layout.public_key.resolve()), "privacy_policy": site.policy.to_dict(),
                         "public_reference": site.public_reference}, print_table)


def _summary(outcomes: list) -> Table:
    table = Table(title="site prepare")
    for column in ("line", "record", "status", "pose", "hands", "face", "snippets", "detail"):
        table.add_column(column)
    for o in sorted(outcomes, key=lambda o: o.line):
        rate = o.detection_rate or {}
        colour = {"done": "green", "skipped": "cyan", "failed": "red"}[o.status]
        table.add_row(
            str(o.line), o.record_id or "-", f"[{colour}]{o.status}[/]",
            *(f"{rate[s]:.0%}" if s in rate else "" for s in ("pose", "hands", "face")),
            "" if o.n_snippets is None else str(o.n_snippets),
            o.error or (f"[yellow]{o.warning}[/]" if o.warning else ""),
        )
    return table


@app.command("prepare")
def prepare(
    site_dir: Path = SiteDir,
    manifest: Path = typer.Option(..., "--manifest", help="CSV: video,patient_id,seizure_id,label[,onset_s,offset_s,generalization_s,view,roi]."),
    video_root: Optional[Path] = typer.Option(None, "--video-root",
                                              help="Folder the manifest's video paths are relative to (default: the manifest's folder); paths outside it are refused."),
    workers: int = typer.Option(1, "--workers", min=1, help="Videos processed in parallel (each worker runs all stages concurrently)."),
    stcnn: str = typer.Option("i3d", "--stcnn", help="Snippet feature extractor: i3d (1024-d) or r2plus1d (512-d)."),
    fps: float = typer.Option(15.0, "--fps", help="Frame rate the videos are resampled to."),
    snippet_frames: int = typer.Option(8, "--snippet-frames", help="Frames per STCNN snippet (8 at 15 fps is ~0.5 s)."),
    streams: str = typer.Option(",".join(DEFAULT_DEID_STREAMS), "--streams",
                                help=f"What to compute, of {','.join(DEID_STREAMS)} (pose is required). 'face' stores face "
                                     "landmarks: a biometric identifier, which no model reads; leave it out unless the "
                                     "site needs it."),
    stcnn_input: str = typer.Option(STCNN_INPUT_PATIENT, "--stcnn-input",
                                    help="What the STCNN sees: patient-window (a square around the patient, each ~2 s "
                                         "window one clip) or frame-snippet (GESTURES: the frame's centre, 8-frame clips)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Model directory (default: $SEMIOFED_MODEL_DIR or the user cache)."),
    output_format: OutputFormat = format_option("table, or json (a list with one object per manifest row)."),
) -> None:
    """De-identify every video of the manifest into records in the site store (re-runs skip finished ones)."""
    # imported here: MediaPipe and torch load in seconds, other commands need neither
    from semiofed.client.deid.pipeline import DeidentifyConfig
    from semiofed.client.deid.prepare import prepare_site

    site = open_site(site_dir)
    config = DeidentifyConfig(fps=fps, snippet_frames=snippet_frames, stcnn=stcnn, stcnn_input=stcnn_input,
                              streams=tuple(s.strip() for s in streams.split(",") if s.strip()))
    with progress_bar() as progress:
        task = progress.add_task("de-identifying videos", total=None)
        started = []

        def on_start(n: int) -> None:
            started.append(n)
            progress.update(task, total=n)

        outcomes = prepare_site(
            site, manifest, video_root=video_root, config=config, model_dir=model_dir, workers=workers,
            on_start=on_start,
            # rows checked before processing starts (invalid, already done) do not move the bar
            on_outcome=lambda o: progress.update(task, advance=1) if started else None,
        )
    failed = [o for o in outcomes if o.status == "failed"]

    def print_table() -> None:
        console = Console()
        console.print(_summary(outcomes))
        done = sum(o.status == "done" for o in outcomes)
        skipped = sum(o.status == "skipped" for o in outcomes)
        console.print(f"{done} made, {skipped} already there, {len(failed)} failed")

    emit(output_format, [o.__dict__ for o in outcomes], print_table)
    if failed:
        raise typer.Exit(1)


@app.command("show")
def show(
    site_dir: Path = SiteDir,
    model: Optional[Path] = typer.Option(None, "--model", help="A calibrated checkpoint (`semiofed calibrate`): also "
                                         "flag the records whose seizure is unlike its reference seizures, for review."),
    output_format: OutputFormat = format_option(),
) -> None:
    """List the site's records: status, frames, detection rate per stream, snippets (and, with --model, which
    seizures are unusual)."""
    layout = open_site(site_dir).layout
    rows = list_records(layout)
    if model is not None:
        from semiofed.client.store import unusual_records
        from semiofed.common.errors import SemiofedError
        from semiofed.common.learning.checkpoint import load_checkpoint
        from semiofed.common.learning.unusual import UnusualModel

        checkpoint = load_checkpoint(model)
        if not checkpoint.meta.get("unusual"):
            raise SemiofedError(f"model {model} has no unusual-seizure reference",
                                "calibrate it first: semiofed calibrate --model M --reference STORE --out M2")
        checks = unusual_records(layout, UnusualModel.from_json(checkpoint.meta["unusual"]))
        rows = [r | {"unusual": checks.get(r["record_id"])} for r in rows]

    def print_table() -> None:
        table = Table(title="records")
        columns = ["record_id", "status", "label", "duration_s", "pose", "hands", "face", "n_snippets", "error"]
        for column in columns + (["unusual"] if model is not None else []):
            table.add_column(column)
        for r in rows:
            rate = r.get("detection_rate") or {}
            check = r.get("unusual") or {}
            flag = ("" if not check else "[yellow]review[/]" + ("" if check.get("score") is None else f" ({check['score']:.2f})")
                    if check.get("flag") else f"{check['score']:.2f}")
            table.add_row(r["record_id"], r["status"], r.get("label") or "",
                          "" if r.get("duration_s") is None else f"{r['duration_s']:.1f}",
                          *(f"{rate[s]:.0%}" if s in rate else "" for s in ("pose", "hands", "face")),
                          "" if r.get("n_snippets") is None else str(r["n_snippets"]),
                          r.get("error") or (f"[yellow]{r['warning']}[/]" if r.get("warning") else ""),
                          *([flag] if model is not None else []))
        console = Console()
        console.print(table)
        made = [r for r in rows if r["status"] != "failed"]
        poor = [r for r in made if r.get("warning")]
        if poor:
            console.print(f"[yellow]{len(poor)} of {len(made)} records track poorly (pose in fewer than "
                          f"{POOR_TRACKING:.0%} of frames): check the camera view, or give the bed region as a roi[/]")
        flagged = [r for r in made if (r.get("unusual") or {}).get("flag")]
        if flagged:
            console.print(f"[yellow]{len(flagged)} of {len(made)} seizures are unlike the model's reference seizures: "
                          "review their videos (a new semiology, a non-epileptic event, or a view the model has not "
                          "seen)[/]")

    emit(output_format, rows, print_table)


@app.command("info")
def info(
    site_dir: Path = SiteDir,
    output_format: OutputFormat = format_option(),
) -> None:
    """Print the site id and the paths of its public key, store, policy and privacy ledger."""
    site = open_site(site_dir)
    layout = site.layout
    data = {
        "site_id": site.site_id,
        "site_dir": str(layout.root.resolve()),
        "public_key": str(layout.public_key.resolve()),
        "store": str(layout.store.resolve()),
        "policy": str(layout.policy_file.resolve()),
        "ledger": str(layout.ledger_file.resolve()),
        "linkage": str(layout.linkage_file.resolve()),
        "privacy_policy": site.policy.to_dict(),
    }

    def print_table() -> None:
        table = Table(title=f"site {site.site_id}", show_header=False)
        for key, value in data.items():
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
        Console().print(table)

    emit(output_format, data, print_table)


@app.command("policy")
def policy(
    site_dir: Path = SiteDir,
    max_epsilon: Optional[float] = typer.Option(None, "--max-epsilon", help="New, lower total epsilon."),
    delta: Optional[float] = typer.Option(None, "--delta", help="New, lower target delta."),
    min_noise: Optional[float] = typer.Option(None, "--min-noise-multiplier", help="New, higher minimum noise."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Show the privacy policy, or tighten it (a budget can only be lowered, never raised)."""
    site = open_site(site_dir)
    if any(v is not None for v in (max_epsilon, delta, min_noise)):
        current = site.policy
        site = tighten_policy(site, replace(
            current,
            target_delta=current.target_delta if delta is None else delta,
            max_epsilon=current.max_epsilon if max_epsilon is None else max_epsilon,
            min_noise_multiplier=current.min_noise_multiplier if min_noise is None else min_noise,
        ))
    data = site.policy.to_dict()

    def print_table() -> None:
        table = Table(title=f"privacy policy of {site.site_id}", show_header=False)
        for key, value in data.items():
            table.add_row(key, str(value))
        Console().print(table)

    emit(output_format, data, print_table)


@app.command()
def join(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory made by `semiofed site init`."),
    superlink: str = typer.Option(..., "--superlink", help="The coordinator's SuperLink as HOST:PORT."),
    ca: Path = typer.Option(..., "--ca", help="The coordinator's CA certificate (ca.pem from `coordinator info`)."),
    clientapp_port: int = typer.Option(9094, "--clientapp-port", help="Local port (127.0.0.1) of the SuperNode's Runtime API, used by the site worker; 9094 or, when taken, a free one."),
    run_epsilon: float = typer.Option(0.0, "--run-epsilon", help="Most epsilon this site spends on federated runs in any --run-window-days window, all runs together (0: what its policy has left)."),
    run_window_days: float = typer.Option(30.0, "--run-window-days", help="The window of --run-epsilon, in days."),
    poll_interval: float = typer.Option(0.25, "--poll-interval", min=0.05, max=3.0, help="Seconds between the SuperNode's requests for a message while a run is going on (Flower's 3 s when idle)."),
    background: bool = typer.Option(False, "--background", help="Detach and write supernode.pid (stop with `site leave`)."),
    output_format: OutputFormat = format_option(
        "table, or json (one object on stdout: the pid with --background, else the SuperNode's exit status when it ends)."),
) -> None:
    """Join the federation: a SuperNode authenticated by the site key, trusting only the coordinator's CA, and the
    site worker that runs the installed semiofed for every message (never code from the run's app package)."""
    from semiofed.client.federation.supernode import join as join_federation

    code = join_federation(site_dir, superlink=superlink, ca=ca, clientapp_port=clientapp_port, run_epsilon=run_epsilon,
                           run_window_days=run_window_days, poll_s=poll_interval, background=background)
    log = site_dir / "logs" / "supernode.log"
    if background:
        emit(output_format, {"superlink": superlink, "background": True, "pid": code, "log": str(log)},
             lambda: Console().print(f"SuperNode started (pid {code}); log {log}"))
        return
    # in the foreground the SuperNode has ended by now; its exit status is ours
    emit(output_format, {"superlink": superlink, "background": False, "supernode_exit_code": code}, lambda: None)
    if code:
        raise typer.Exit(code)


@app.command()
def leave(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site directory."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Stop the site's background SuperNode."""
    from semiofed.client.federation.supernode import leave as leave_federation

    stopped = leave_federation(site_dir)
    emit(output_format, {"stopped": stopped},
         lambda: Console().print("SuperNode stopped" if stopped else "no SuperNode was running for this site"))
