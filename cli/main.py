"""The root `semiofed` command: wires the command groups; cli/output.py turns their failures into exit codes."""

from __future__ import annotations

import logging

import typer

from semiofed.cli.output import EXIT_CODES_HELP, GuardedGroup

app = typer.Typer(
    name="semiofed",
    help=(
        "Privacy-preserving federated learning for epileptic-seizure video.\n\n"
        "Hospital sites turn videos into de-identified records and train locally "
        "with differential privacy (`site`), join a federation run by a `coordinator`; `predict` classifies one video; "
        "the model files are fetched and checked with `models`; `audit` checks sites' "
        "signed privacy ledgers.\n\n" + EXIT_CODES_HELP
    ),
    cls=GuardedGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from semiofed.cli import audit_cmd, coordinator_cmd, demo_cmd, models_cmd, phantom_cmd, predict_cmd, site_cmd, train_cmd

    site_cmd.app.command("train")(train_cmd.train)
    site_cmd.app.command("budget")(train_cmd.budget)
    site_cmd.app.command("cv")(train_cmd.cv)
    app.add_typer(models_cmd.app, name="models")
    app.add_typer(site_cmd.app, name="site")
    app.command("predict")(predict_cmd.predict)
    app.command("calibrate")(predict_cmd.calibrate)
    app.add_typer(phantom_cmd.app, name="phantom")
    app.command("demo")(demo_cmd.demo)
    app.add_typer(audit_cmd.app, name="audit")
    app.add_typer(coordinator_cmd.app, name="coordinator")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log library details to stderr; on an error, also print its traceback."),
) -> None:
    """Privacy-preserving federated learning for epileptic-seizure video."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


def main() -> None:
    """Entry point: run the CLI (errors become one line and the exit status listed in the help)."""
    _register()
    app()


if __name__ == "__main__":
    main()
