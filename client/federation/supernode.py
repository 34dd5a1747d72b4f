"""`site join`: a Flower SuperNode that authenticates with the site's key, trusts only the coordinator's CA,
and hands every message to the site worker (client/federation/worker.py), which runs the installed ClientApp.

The SuperNode runs with `--isolation process`: it never starts Flower's
`flwr-clientapp`, which would import code from the run's app package. Its local
Runtime API listens on 127.0.0.1 only, and taking a task from it needs the
site's runtime secret (keys/runtime.secret, owner-only)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from semiofed.client.federation import supernode_process
from semiofed.client.site import Site, open_site
from semiofed.common.federation import processes
from semiofed.common.errors import SemiofedError
from semiofed.common.files import write_bytes_atomic
from semiofed.common.privacy.keys import load_site_private_key

SUPERNODE_KEY = "supernode_key"  # the site key again, in the OpenSSH encoding Flower's SuperNode reads
PID_FILE = "supernode.pid"  # the worker's pid: it starts and stops the SuperNode
LOG_FILE = "supernode.log"
WORKER = "semiofed.client.federation.worker"
DEFAULT_RUNTIME_PORT = 9094
ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def supernode_key(site: Site) -> Path:
    """The site's private key in OpenSSH encoding (owner-only), derived from keys/site_key.pem once."""
    path = site.layout.keys_dir / SUPERNODE_KEY
    if not path.exists():
        key = load_site_private_key(site.layout.private_key)
        write_bytes_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
    return path


def check_superlink_address(address: str) -> str:
    """HOST:PORT of the coordinator's SuperLink, checked."""
    match = ADDRESS.match(address.strip())
    if not match or not (0 < int(match.group(2)) < 65536):
        raise SemiofedError(f"SuperLink address {address!r} is not HOST:PORT", "give e.g. --superlink coordinator.hospital.org:9092")
    return address.strip()


def check_ca(path: Path) -> Path:
    """The coordinator's CA certificate, checked to be a PEM certificate."""
    try:
        x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise SemiofedError(f"CA certificate {path} not found", "ask the coordinator for ca.pem (`coordinator info` names it)") from None
    except ValueError as exc:
        raise SemiofedError(f"CA certificate {path} is not a PEM certificate ({exc})", "give the coordinator's ca.pem") from exc
    return Path(path).resolve()


def supernode_command(site: Site, *, superlink: str, ca: Path, clientapp_port: int, run_epsilon: float = 0.0,
                      run_window_days: float = 30.0, secret_file: Path | None = None,
                      poll_s: float = supernode_process.POLL_S) -> list[str]:
    """The SuperNode command line for this site: Flower's flower-supernode with the poll clock of
    client/federation/supernode_process.py, in process isolation (the site worker runs each message)."""
    node_config = f'site-dir="{site.layout.root.resolve()}"'
    if run_epsilon > 0:
        node_config += f" run-epsilon={float(run_epsilon)} run-window-days={float(run_window_days)}"
    return supernode_process.command([
        "--superlink", check_superlink_address(superlink),
        "--root-certificates", str(check_ca(ca)),
        "--auth-supernode-private-key", str(supernode_key(site)),
        "--node-config", node_config,
        "--isolation", "process", "--host", "127.0.0.1", "--port", str(clientapp_port),
        *(["--superexec-auth-secret-file", str(secret_file)] if secret_file is not None else []),
    ], poll_s=poll_s)


def join(site_dir: Path, *, superlink: str, ca: Path, clientapp_port: int = DEFAULT_RUNTIME_PORT, run_epsilon: float = 0.0,
         run_window_days: float = 30.0, poll_s: float = supernode_process.POLL_S, background: bool = False) -> int:
    """Start this site's worker and SuperNode: in the foreground (a service) or detached with a pid file;
    returns the pid or exit code."""
    from semiofed.client.federation import worker

    site = open_site(site_dir)
    if _worker_running(processes.read_pid(site.layout.root / PID_FILE)):
        raise SemiofedError(f"site {site.site_id} already runs a SuperNode (pid file {site.layout.root / PID_FILE})",
                            "stop it with `semiofed site leave --site-dir DIR` first")
    check_superlink_address(superlink)
    check_ca(ca)
    if not run_window_days > 0:
        raise SemiofedError(f"--run-window-days {run_window_days} is not positive", "give the window in days, e.g. 30")
    if not processes.port_free("127.0.0.1", clientapp_port):
        if clientapp_port != DEFAULT_RUNTIME_PORT:
            raise SemiofedError(f"local port {clientapp_port} (the SuperNode's Runtime API) is in use",
                                "choose another --clientapp-port, or leave it out to take a free one")
        clientapp_port = processes.free_port("127.0.0.1")  # another site's SuperNode on this machine (a trial) has 9094
    supernode_key(site)
    if background:
        command = worker.command(site.layout.root, superlink=superlink, ca=ca, runtime_port=clientapp_port,
                                 run_epsilon=run_epsilon, run_window_days=run_window_days, poll_s=poll_s)
        return processes.start_detached(command, log_file=site.layout.root / "logs" / LOG_FILE,
                                        pid_file=site.layout.root / PID_FILE)
    # in the foreground (a service): this process is the worker, and SIGINT or SIGTERM stops it and its SuperNode
    write_bytes_atomic(site.layout.root / PID_FILE, f"{os.getpid()}\n".encode())
    try:
        return worker.run(site.layout.root, superlink=superlink, ca=ca, runtime_port=clientapp_port, run_epsilon=run_epsilon,
                          run_window_days=run_window_days, poll_s=poll_s)
    finally:
        (site.layout.root / PID_FILE).unlink(missing_ok=True)


def leave(site_dir: Path) -> bool:
    """Stop the site's background SuperNode; True if one was running."""
    return bool(leave_all([site_dir]))


def leave_all(site_dirs: Sequence[Path]) -> list[Path]:
    """Stop the background SuperNodes of several sites on this machine together (a trial, the demo); returns the
    sites whose worker was running. A foreground `site join` is left to its service manager."""
    pids = {}
    for site_dir in site_dirs:
        pid = processes.read_pid(open_site(site_dir).layout.root / PID_FILE)
        if processes.is_running(pid, expect=WORKER):
            pids[pid] = Path(site_dir)
    return [pids[pid] for pid in processes.stop_all(list(pids))]


def _worker_running(pid: int | None) -> bool:
    """The site's worker runs: detached (`python -m ...worker`) or in the foreground (`semiofed site join`)."""
    return processes.is_running(pid, expect=WORKER) or processes.is_running(pid, expect="join")
