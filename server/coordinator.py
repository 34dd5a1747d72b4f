"""The coordinator's directory and the SuperLink it runs: TLS, enrolled sites, database, checkpoints, run launch.

The SuperLink listens on loopback only (its Control and Runtime APIs have no
authentication in Flower's open-source build); the sites reach the Fleet API
through the gateway (server/gateway.py) on the address they are given.

DIR/
  coordinator.json        address, ports, certificate names, enrolled and registered sites
  tls/ca.pem, ca.key      the federation's CA (sites get ca.pem only)
  tls/superlink.pem, .key the SuperLink's certificate
  sites/<site>.pub        enrolled site keys (ECDSA P-384, OpenSSH)
  state/superlink.db      SuperLink state (runs, registered nodes) survives restarts (unless init --superlink-state memory)
  checkpoints/run-<id>/   each run's run.json, round checkpoints and final model
  app/pyproject.toml      the Flower app: only configuration, the code is each side's installed semiofed
  flwr-home/config.toml   the `flwr` CLI's connection to this SuperLink
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from semiofed.common.federation import processes
from semiofed.common.errors import SemiofedError
from semiofed.common.federation.run_config import SITE_NODES_FILE, FederationConfig
from semiofed.common.files import make_private_dir, write_bytes_atomic, write_json_atomic
from semiofed.common.privacy.keys import load_public_key, public_key_fingerprint
from semiofed.common.version import semiofed_version
from semiofed.server.control_client import ControlApiError, ControlClient
from semiofed.server.certificates import DEFAULT_SANS, TlsFiles, make_ca, make_server_certificate

log = logging.getLogger(__name__)

COORDINATOR_FILE = "coordinator.json"
CONNECTION = "semiofed"
DEFAULT_PORT = 9092  # HTTPS, the sites' address: the gateway, Fleet API only
LOOPBACK = "127.0.0.1"  # the SuperLink itself: Fleet behind the gateway, Control for `coordinator run`, Runtime for the ServerApp
GATEWAY_MODULE = "semiofed.server.gateway"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class CoordinatorError(SemiofedError):
    """The coordinator directory is missing, incomplete, or its SuperLink is not in the needed state."""


SUPERLINK_STATES = ("database", "memory")
SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.25"  # loopback asks, 4 a second
FLOWER_IN_MEMORY = ":flwr-in-memory:"  # flwr.supercore.constant.FLWR_IN_MEMORY_DB_NAME: Flower's Python in-memory state


@dataclass
class CoordinatorState:
    """coordinator.json."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # the gateway (site-facing)
    superlink_port: int = 0  # the SuperLink on loopback; 0: chosen at the first start
    sans: list[str] = field(default_factory=lambda: list(DEFAULT_SANS))
    enrolled: dict[str, str] = field(default_factory=dict)  # site -> key fingerprint
    registered: dict[str, str] = field(default_factory=dict)  # site -> Flower node id
    # "database": state/superlink.db, runs and registered sites survive a restart; "memory": Flower's in-memory state,
    # rounds about twice as fast (every Fleet request of the database state takes SQLite's write lock), but a restart
    # forgets the runs and registers every site anew (the sites' SuperNodes must be restarted: `site join` again)
    superlink_state: str = "database"


class Coordinator:
    """Paths and operations of one coordinator directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    # --- layout ----------------------------------------------------------
    @property
    def tls(self) -> TlsFiles:
        t = self.root / "tls"
        return TlsFiles(t / "ca.pem", t / "ca.key", t / "superlink.pem", t / "superlink.key")

    sites_dir = property(lambda self: self.root / "sites")
    database = property(lambda self: self.root / "state" / "superlink.db")
    checkpoints_dir = property(lambda self: self.root / "checkpoints")
    app_dir = property(lambda self: self.root / "app")
    flwr_home = property(lambda self: self.root / "flwr-home")
    log_file = property(lambda self: self.root / "logs" / "superlink.log")
    pid_file = property(lambda self: self.root / "superlink.pid")
    gateway_log_file = property(lambda self: self.root / "logs" / "gateway.log")
    gateway_pid_file = property(lambda self: self.root / "gateway.pid")

    def state(self) -> CoordinatorState:
        path = self.root / COORDINATOR_FILE
        try:
            return CoordinatorState(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise CoordinatorError(f"{self.root} is not a coordinator directory (no {COORDINATOR_FILE})",
                                   "run `semiofed coordinator init --dir DIR` first") from None
        except (OSError, ValueError, TypeError) as exc:
            raise CoordinatorError(f"{path} is unreadable ({exc})", "restore it or re-run `coordinator init` in a new directory") from exc

    def save_state(self, state: CoordinatorState) -> None:
        write_json_atomic(self.root / COORDINATOR_FILE, asdict(state), mode=0o644)

    # --- init and enrolment ----------------------------------------------
    def init(self, *, sans: Sequence[str] = (), host: str = "127.0.0.1", port: int = DEFAULT_PORT,
             superlink_state: str = "database") -> CoordinatorState:
        """Create the CA, the SuperLink certificate and the directory layout (refuses to overwrite)."""
        if superlink_state not in SUPERLINK_STATES:
            raise CoordinatorError(f"SuperLink state {superlink_state!r} is not one of {', '.join(SUPERLINK_STATES)}",
                                   "give --superlink-state database (survives restarts) or memory (faster rounds)")
        if (self.root / COORDINATOR_FILE).exists():
            raise CoordinatorError(f"{self.root} is already a coordinator directory", "use it as it is, or choose a new --dir")
        names = list(dict.fromkeys([*sans, *DEFAULT_SANS]))
        for d in (self.root, self.root / "tls", self.sites_dir, self.database.parent, self.checkpoints_dir, self.flwr_home):
            make_private_dir(d)
        make_ca(self.tls)
        make_server_certificate(self.tls, names)
        state = CoordinatorState(host=host, port=port, sans=names, superlink_state=superlink_state)
        self.save_state(state)
        return state

    def enroll(self, public_key_file: Path, name: str | None = None) -> str:
        """Record a site's public key (and register it at once when the SuperLink runs); returns the site name."""
        try:
            key = load_public_key(Path(public_key_file))
        except FileNotFoundError:
            raise CoordinatorError(f"site key {public_key_file} not found", "give the site_key.pub the site sent you") from None
        text = Path(public_key_file).read_text(encoding="ascii").strip()
        name = name or (text.split()[2] if len(text.split()) > 2 else None)
        if name is None:
            raise CoordinatorError(f"site key {public_key_file} does not name its site",
                                   "give --name with the site's id (`semiofed site info` shows it at the site)")
        if not SITE_NAME.match(name):
            raise CoordinatorError(f"site name {name!r} is not usable", "give --name with letters, digits, '.', '_' or '-'")
        state = self.state()
        fingerprint = public_key_fingerprint(key)
        if name in state.enrolled and state.enrolled[name] != fingerprint:
            raise CoordinatorError(f"site {name} is already enrolled with another key ({state.enrolled[name]})",
                                   "enroll the new key under another --name, or remove sites/NAME.pub first")
        write_bytes_atomic(self.sites_dir / f"{name}.pub", (text + "\n").encode("ascii"), mode=0o644)
        state.enrolled[name] = fingerprint
        self.save_state(state)
        if self.running():
            self.register_pending()
        return name

    # --- the SuperLink -----------------------------------------------------
    def pid(self) -> int | None:
        return processes.read_pid(self.pid_file)

    def running(self) -> bool:
        return processes.is_running(self.pid(), expect="flower-superlink")

    def gateway_pid(self) -> int | None:
        return processes.read_pid(self.gateway_pid_file)

    def gateway_running(self) -> bool:
        return processes.is_running(self.gateway_pid(), expect=GATEWAY_MODULE)

    def flwr_env(self) -> dict[str, str]:
        state = self.state()
        make_private_dir(self.flwr_home)
        config = (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                  f'address = "{LOOPBACK}:{state.superlink_port}"\nroot-certificates = "{self.tls.ca_certificate}"\n')
        write_bytes_atomic(self.flwr_home / "config.toml", config.encode("utf-8"))
        # the SuperLink's SuperExec asks it for a ServerApp to launch every second (Flower's default); a run starts sooner
        poll = {SUPEREXEC_POLL_ENV: os.environ.get(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S)}
        return processes.flower_env({"FLWR_HOME": str(self.flwr_home), **poll})

    def superlink_command(self) -> list[str]:
        state, tls = self.state(), self.tls
        return [
            processes.flower_bin("flower-superlink"),
            "--ssl-certfile", str(tls.server_certificate), "--ssl-keyfile", str(tls.server_key),
            "--ssl-ca-certfile", str(tls.ca_certificate),
            "--enable-supernode-auth",
            "--database", FLOWER_IN_MEMORY if state.superlink_state == "memory" else str(self.database),
            "--disable-runtime-dependency-installation",
            # Flower 1.41 serves Fleet, Control and Runtime APIs on this one port: loopback only, the sites use the gateway
            "--host", LOOPBACK, "--port", str(state.superlink_port),
        ]

    def gateway_command(self) -> list[str]:
        state, tls = self.state(), self.tls
        return [
            sys.executable, "-m", GATEWAY_MODULE, "--host", state.host, "--port", str(state.port),
            "--upstream", f"https://{LOOPBACK}:{state.superlink_port}", "--certfile", str(tls.server_certificate),
            "--keyfile", str(tls.server_key), "--ca-certificate", str(tls.ca_certificate),
        ]

    def start(self, *, port: int | None = None, host: str | None = None, timeout: float = 90.0) -> int:
        """Start the SuperLink on loopback (TLS, site authentication, persistent state), the Fleet-only gateway on the
        sites' address, and register enrolled sites; returns the SuperLink's pid."""
        if self.running() or self.gateway_running():
            raise CoordinatorError(f"the SuperLink of {self.root} already runs (pid {self.pid() or self.gateway_pid()})",
                                   "use it, or `semiofed coordinator stop --dir DIR` first")
        state = self.state()
        if port is not None or host is not None:
            state.port, state.host = port or state.port, host or state.host
        processes.check_port_free(state.host, state.port)
        if state.superlink_state == "memory":
            state.registered = {}  # a SuperLink that starts in memory knows no site: register every enrolled one
        if not state.superlink_port or not processes.port_free(LOOPBACK, state.superlink_port) or state.superlink_port == state.port:
            state.superlink_port = processes.free_port(LOOPBACK)
        self.save_state(state)
        pid = processes.start_detached(self.superlink_command(), log_file=self.log_file, pid_file=self.pid_file,
                                       env=self.flwr_env())
        try:
            processes.wait_listening(LOOPBACK, state.superlink_port, pid=pid, timeout=timeout, log_file=self.log_file)
            gateway = processes.start_detached(self.gateway_command(), log_file=self.gateway_log_file,
                                               pid_file=self.gateway_pid_file)
            processes.wait_listening(_client_host(state.host), state.port, pid=gateway, timeout=timeout,
                                     log_file=self.gateway_log_file)
            self.register_pending()
        except BaseException:
            self.stop()
            raise
        return pid

    def stop(self) -> bool:
        """Stop the gateway, the SuperLink and its ServerApp processes."""
        gateway = processes.stop(self.gateway_pid()) if self.gateway_running() else False
        return processes.stop(self.pid()) or gateway

    def _flwr(self, args: Sequence[str], *, timeout: float = 60.0,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([processes.flower_bin("flwr"), *args], env=env or self.flwr_env(), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    def control(self) -> ControlClient:
        """A client of the running SuperLink's Control API (loopback), in this process."""
        return ControlClient(f"{LOOPBACK}:{self.state().superlink_port}", self.tls.ca_certificate)

    def register_pending(self) -> dict[str, str]:
        """Register every enrolled key the SuperLink does not know yet (Control API RegisterNode); the sites it took
        are kept even when it refuses one."""
        state = self.state()
        names = sorted(set(state.enrolled) - set(state.registered))
        refused = []
        with self.control() as control:
            for name in names:
                try:
                    state.registered[name] = control.register(self.sites_dir / f"{name}.pub")
                except ControlApiError as exc:
                    refused.append((name, exc.what))
                    continue
                log.info("registered site %s as node %s", name, state.registered[name])
        self.save_state(state)
        # the run's strategy admits a site only from the node its key was registered as (server/federation/strategy.py)
        write_json_atomic(self.sites_dir / SITE_NODES_FILE, {n: str(i) for n, i in sorted(state.registered.items())})
        if refused:
            name, why = refused[0]
            raise CoordinatorError(f"the SuperLink refused to register site {name}: {why}",
                                   "check that the key is an ECDSA P-384 key in OpenSSH format and not registered twice")
        return state.registered

    def site_status(self, control: ControlClient | None = None) -> dict[str, str]:
        """Each registered site's node status on the running SuperLink (online, offline, ...)."""
        try:
            if control is not None:
                by_node = control.node_status()
            else:
                with self.control() as fresh:
                    by_node = fresh.node_status()
        except ControlApiError as exc:
            raise CoordinatorError(f"the SuperLink did not list its sites: {exc.what}",
                                   "start it with `semiofed coordinator start` and read its log") from None
        return {name: by_node.get(node_id, "unknown") for name, node_id in sorted(self.state().registered.items())}

    def wait_for_sites(self, count: int, *, timeout: float = 120.0, poll: float = 0.25) -> dict[str, str]:
        """Wait until at least `count` sites are online (after a restart, SuperNodes reconnect with a back-off)."""
        deadline = time.monotonic() + timeout
        with self.control() as control:
            while True:
                status = self.site_status(control)
                if sum(v == "online" for v in status.values()) >= count or time.monotonic() > deadline:
                    return status
                time.sleep(poll)

    # --- runs ----------------------------------------------------------------
    def write_app(self, config: FederationConfig) -> Path:
        """The Flower app directory: configuration only, so each side runs its own installed semiofed."""
        make_private_dir(self.app_dir)
        lines = [
            '[build-system]', 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', '',
            '[project]', 'name = "semiofed-federation"', f'version = "{_pep440(semiofed_version())}"',
            'description = "semiofed federated seizure classifier (configuration only)"', 'license = "Apache-2.0"',
            'dependencies = []', '', '[tool.hatch.build.targets.wheel]', 'packages = ["."]', '',
            '[tool.flwr.app]', 'publisher = "semiofed"', '', '[tool.flwr.app.components]',
            'serverapp = "semiofed.server.federation.server_app:app"', 'clientapp = "semiofed.client.federation.client_app:app"', '',
            '[tool.flwr.app.config]',
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in config.to_run_config().items()]
        write_bytes_atomic(self.app_dir / "pyproject.toml", ("\n".join(lines) + "\n").encode("utf-8"), mode=0o644)
        return self.app_dir

    def check_sites_online(self, min_sites: int, *, wait: float = 60.0,
                           on_line: Callable[[str], None] | None = None) -> dict[str, str]:
        """The enrolled sites' status, after waiting up to `wait` s for `min_sites` of them to be online; a one-line
        CoordinatorError naming the missing sites when too few are."""
        status = self.wait_for_sites(min_sites, timeout=wait)
        online = sorted(s for s, v in status.items() if v == "online")
        missing = sorted(set(status) - set(online))
        if on_line is not None:
            on_line(f"sites online: {', '.join(online) or 'none'}" + (f"; not online: {', '.join(missing)}" if missing else ""))
        if len(online) < min_sites:
            raise CoordinatorError(
                f"only {len(online)} of {len(status)} enrolled sites are online after {wait:.0f} s "
                f"({', '.join(missing) or 'none enrolled'} not), fewer than --min-sites {min_sites}",
                "start the missing sites (`semiofed site join`), or run with a lower --min-sites")
        return status

    def run(self, config: FederationConfig, *, on_line: Callable[[str], None] | None = None, timeout: float | None = None,
            wait_for_sites: float = 60.0) -> dict[str, Any]:
        """Launch a federated run on the running SuperLink (once at least `min_sites` enrolled sites are online),
        stream its log, return its run.json."""
        from semiofed.server.run_log import read_run

        if not self.running():
            raise CoordinatorError(f"the SuperLink of {self.root} is not running", "start it with `semiofed coordinator start --dir DIR`")
        self.check_sites_online(config.min_sites, wait=wait_for_sites, on_line=on_line)
        config = FederationConfig(**{**asdict(config), "checkpoints_dir": str(self.checkpoints_dir),
                                     "site_keys_dir": str(self.sites_dir), "semiofed_version": semiofed_version()})
        app = self.write_app(config)
        command = [processes.flower_bin("flwr"), "run", str(app), CONNECTION, "--stream"]
        run_id = None
        with subprocess.Popen(command, env=self.flwr_env(), cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True) as proc:
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    match = re.search(r"started run (\d+)", line)
                    if match:
                        run_id = match.group(1)
                    if on_line is not None:
                        on_line(line.rstrip("\n"))
                proc.wait(timeout=timeout)
            except BaseException:
                processes.stop(proc.pid, timeout=5)
                raise
        if run_id is None:
            raise CoordinatorError(f"`flwr run` did not start a run (exit {proc.returncode})", "read its output above")
        run_file = self.checkpoints_dir / f"run-{run_id}"
        if not (run_file / "run.json").is_file():
            raise CoordinatorError(f"run {run_id} left no run.json (exit {proc.returncode})", f"read the SuperLink log {self.log_file}")
        return read_run(run_file)

    def runs(self) -> list[dict[str, Any]]:
        """Every run's run.json, oldest first."""
        from semiofed.server.run_log import read_run

        found = [read_run(p) for p in self.checkpoints_dir.glob("run-*") if (p / "run.json").is_file()]
        return sorted(found, key=lambda r: r.get("started", ""))

    def latest_checkpoint(self) -> Path | None:
        """The last global checkpoint written by any run."""
        path = self.checkpoints_dir / "latest.json"
        return Path(json.loads(path.read_text())["checkpoint"]) if path.is_file() else None

    def info(self) -> dict[str, Any]:
        """Paths and addresses a site or script needs."""
        state = self.state()
        return {
            "coordinator_dir": str(self.root), "superlink": f"{state.sans[0] if state.sans else state.host}:{state.port}",
            "port": state.port, "ca_certificate": str(self.tls.ca_certificate), "superlink_certificate": str(self.tls.server_certificate),
            "certificate_names": state.sans, "database": str(self.database), "checkpoints_dir": str(self.checkpoints_dir),
            "sites_dir": str(self.sites_dir), "enrolled_sites": sorted(state.enrolled), "registered_sites": state.registered,
            "running": self.running(), "pid": self.pid(), "log": str(self.log_file),
            "gateway_running": self.gateway_running(), "gateway_pid": self.gateway_pid(), "gateway_log": str(self.gateway_log_file),
            "superlink_loopback_port": state.superlink_port, "semiofed_version": semiofed_version(),
        }


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


def _pep440(version: str) -> str:
    return version.split("+")[0] or "0"
