"""`site join`: a Flower SuperNode that authenticates with the site's key, trusts only the coordinator's CA,
and serves the site's local store to the federation's ClientApp."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from semiofed.client.site import Site, open_site
from semiofed.common.federation import processes
from semiofed.common.errors import SemiofedError
from semiofed.common.files import write_bytes_atomic
from semiofed.common.privacy.keys import load_site_private_key

SUPERNODE_KEY = "supernode_key"  # the site key again, in the OpenSSH encoding Flower's SuperNode reads
PID_FILE = "supernode.pid"
LOG_FILE = "supernode.log"
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


def supernode_command(site: Site, *, superlink: str, ca: Path, clientapp_port: int, run_epsilon: float = 0.0) -> list[str]:
    """The flower-supernode command line for this site."""
    node_config = f'site-dir="{site.layout.root.resolve()}"'
    if run_epsilon > 0:
        node_config += f" run-epsilon={float(run_epsilon)}"
    return [
        processes.flower_bin("flower-supernode"),
        "--superlink", check_superlink_address(superlink),
        "--root-certificates", str(check_ca(ca)),
        "--auth-supernode-private-key", str(supernode_key(site)),
        "--node-config", node_config,
        "--port", str(clientapp_port),
    ]


def join(site_dir: Path, *, superlink: str, ca: Path, clientapp_port: int = 9094, run_epsilon: float = 0.0,
         background: bool = False) -> int:
    """Start this site's SuperNode: in the foreground (a service) or detached with a pid file; returns the pid or exit code."""
    import subprocess

    site = open_site(site_dir)
    if processes.is_running(processes.read_pid(site.layout.root / PID_FILE), expect="flower-supernode"):
        raise SemiofedError(f"site {site.site_id} already runs a SuperNode (pid file {site.layout.root / PID_FILE})",
                            "stop it with `semiofed site leave --site-dir DIR` first")
    command = supernode_command(site, superlink=superlink, ca=ca, clientapp_port=clientapp_port, run_epsilon=run_epsilon)
    if background:
        return processes.start_detached(command, log_file=site.layout.root / "logs" / LOG_FILE,
                                        pid_file=site.layout.root / PID_FILE)
    return subprocess.call(command, env=processes.flower_env())


def leave(site_dir: Path) -> bool:
    """Stop the site's background SuperNode; True if one was running."""
    site = open_site(site_dir)
    pid = processes.read_pid(site.layout.root / PID_FILE)
    return processes.stop(pid) if processes.is_running(pid, expect="flower-supernode") else False
