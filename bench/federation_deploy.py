"""A real deployment on 127.0.0.1 for the overhead part: Coordinator + SuperLink (TLS, site auth), one SuperNode a site.

Also how long a fresh Python takes to import what each `flwr-clientapp`
process needs, since the deployment starts one per message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from federation_runs import BENCH_DIR, TreeSampler, process_tree, run_summary, stop_processes

from semiofed.common.federation.run_config import FederationConfig


def deployment_run(sites_dir: Path, config: dict[str, Any], timeout: float, superlink_state: str = "database") -> dict[str, Any]:
    """Coordinator + SuperLink (TLS, site auth) + one SuperNode per site on 127.0.0.1; one run; everything stopped after."""
    from semiofed.client.federation import supernode
    from semiofed.client.site import open_site
    from semiofed.common.federation.processes import free_port
    from semiofed.server.coordinator import Coordinator
    from semiofed.server.federation.simulation import find_sites

    root = BENCH_DIR / "deployment"
    shutil.rmtree(root, ignore_errors=True)
    coordinator = Coordinator(root / "coordinator")
    coordinator.init(port=free_port(), superlink_state=superlink_state)
    sites = find_sites(sites_dir)
    for site_dir in sites:
        site = open_site(site_dir)
        coordinator.enroll(site.layout.public_key, name=site.site_id)
    joined: list[Path] = []
    out: dict[str, Any] = {}
    try:
        t = time.monotonic()
        coordinator.start()
        out["superlink_start_s"] = time.monotonic() - t  # until it listens, plus `flwr supernode register` per site
        t = time.monotonic()
        address = f"127.0.0.1:{coordinator.state().port}"
        for site_dir in sites:
            supernode.join(site_dir, superlink=address, ca=coordinator.tls.ca_certificate, clientapp_port=free_port(),
                           background=True)
            joined.append(site_dir)
        online = wait_online(coordinator, len(sites), timeout=120)
        out["supernodes_online_s"] = time.monotonic() - t  # until `flwr supernode list` shows them all online
        out["supernodes_online"] = online
        run_config = FederationConfig(**{k: v for k, v in config.items() if k not in ("checkpoints_dir", "semiofed_version")})
        with TreeSampler(os.getpid(), interval=0.2) as sampler:
            t = time.monotonic()
            with open(BENCH_DIR / "deployment-serverapp.log", "w", encoding="utf-8") as serverapp_log:  # `flwr run --stream`
                run = coordinator.run(run_config, timeout=timeout, on_line=lambda line: serverapp_log.write(
                    f"{time.strftime('%H:%M:%S')}.{int(time.time() % 1 * 1000):03d} {line}\n"))
            out["run_s"] = time.monotonic() - t
        out["clientapp_processes"] = len(sampler.clientapps)
        lifetimes = sorted(b - a for a, b in sampler.clientapps.values())
        out["clientapp_seen_s_median"] = lifetimes[len(lifetimes) // 2] if lifetimes else None
        out.update(run_summary(run))
    finally:
        # every process this run started, before stopping the leaders: SuperExecs outlive them, reparented to init
        started_here = [p for p in process_tree(os.getpid()) if p.pid != os.getpid()]
        supernode.leave_all(joined)
        coordinator.stop()
        stop_processes(started_here)
    return out


def wait_online(coordinator: Any, n: int, *, timeout: float) -> int:
    """Wait until the SuperLink lists `n` SuperNodes online (or `timeout` s); how many were."""
    deadline = time.monotonic() + timeout
    online = 0
    with coordinator.control() as control:
        while time.monotonic() < deadline:
            online = sum(1 for status in control.node_status().values() if status.lower() == "online")
            if online >= n:
                return online
            time.sleep(0.25)
    return online


def cold_imports() -> dict[str, float]:
    """Seconds a fresh Python takes to import what a flwr-clientapp needs: the app module, and torch for train/evaluate."""
    out = {}
    for name, code in (("python", "pass"), ("client_app", "import semiofed.client.federation.client_app"),
                       ("client_app + torch training", "import semiofed.client.federation.client_app, semiofed.client.training.federated_round")):
        times = []
        for _ in range(3):
            t = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.monotonic() - t)
        out[name] = sorted(times)[1]
    return out
