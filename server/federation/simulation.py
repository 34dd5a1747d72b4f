"""The same ServerApp and ClientApp in Flower's simulation engine: one virtual SuperNode per site directory."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from semiofed.common.errors import SemiofedError
from semiofed.common.federation.run_config import FederationConfig

log = logging.getLogger(__name__)

SITE_FILE = "site.json"


def find_sites(sites_dir: Path) -> list[Path]:
    """Site directories directly under `sites_dir` (those with a site.json), sorted by name."""
    sites = sorted(p for p in Path(sites_dir).iterdir() if (p / SITE_FILE).is_file()) if Path(sites_dir).is_dir() else []
    if len(sites) < 2:
        raise SemiofedError(f"{sites_dir} holds {len(sites)} site director{'y' if len(sites) == 1 else 'ies'}",
                            "give --sites-dir a folder with at least two `semiofed site init` directories")
    return sites


class VirtualSite:
    """What a real SuperNode gets from --node-config and the app, for a virtual one: its site and the run config."""

    def __init__(self, site_dirs: list[Path], config: FederationConfig) -> None:
        self.site_dirs, self.config = site_dirs, config

    def settings(self, context: Any) -> Any:
        from semiofed.client.training.federated_round import SiteSettings

        return SiteSettings(site_dir=self.site_dirs[int(context.node_config["partition-id"])])

    def client_fn(self, context: Any) -> Any:
        from semiofed.client.federation.client_app import SiteClient

        return SiteClient(context, config=self.config, settings=self.settings(context))

    def run_of(self, context: Any) -> tuple[FederationConfig, Any]:
        return self.config, self.settings(context)

    def egress_spec(self, context: Any) -> Any:
        from semiofed.client.federation.client_app import egress_spec

        return egress_spec(context, config=self.config, settings=self.settings(context))


class _LineHandler(logging.Handler):
    def __init__(self, on_line: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.on_line = on_line

    def emit(self, record: logging.LogRecord) -> None:
        self.on_line(record.getMessage())


@contextlib.contextmanager
def flower_log(on_line: Callable[[str], None] | None) -> Iterator[None]:
    """Flower's log lines go to `on_line` (or, without it, to Flower's own console handler only, not twice via root)."""
    logger = logging.getLogger("flwr")
    handlers, propagate = list(logger.handlers), logger.propagate
    logger.propagate = False
    if on_line is not None:
        logger.handlers[:] = [_LineHandler(on_line)]
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate


def simulate(sites_dir: Path, config: FederationConfig, *, cpus: int = 2,
             on_line: Callable[[str], None] | None = None, mods: Sequence[Callable[..., Any]] = ()) -> Path:
    """Run the federation in Flower's simulation engine; returns the final global checkpoint.

    on_line receives Flower's log lines instead of the console. `mods` wrap the
    ClientApp outside its own (bench/federation_sim.py measures messages so).
    """
    from flwr.client import ClientApp
    from flwr.simulation import run_simulation

    from semiofed.client.federation.client_app import make_secure_aggregation_mod
    from semiofed.client.federation.egress import make_egress_mod
    from semiofed.server.run_log import read_run
    from semiofed.server.federation.server_app import make_server_app

    # CPU-only actors; without this Ray prints a FutureWarning about GPU variables at every start
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    sites = find_sites(sites_dir)
    virtual = VirtualSite(sites, config)
    client_app = ClientApp(client_fn=virtual.client_fn, mods=[*mods, make_secure_aggregation_mod(virtual.run_of), make_egress_mod(virtual.egress_spec)])
    checkpoints = Path(config.checkpoints_dir)
    before = set(checkpoints.glob("run-*")) if checkpoints.is_dir() else set()
    with flower_log(on_line):
        run_simulation(server_app=make_server_app(config), client_app=client_app, num_supernodes=len(sites),
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": "ERROR"}})
    runs = sorted(set(checkpoints.glob("run-*")) - before, key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SemiofedError("the simulation ended without a run record", "run with --verbose and read Flower's log above")
    run = read_run(runs[-1])
    if run.get("status") != "finished" or not run.get("final_checkpoint"):
        raise SemiofedError(f"the simulated run failed: {run.get('error', 'see run.json')}", f"read {runs[-1] / 'run.json'}")
    return Path(run["final_checkpoint"])
