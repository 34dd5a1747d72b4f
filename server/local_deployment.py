"""A whole federation on this machine: a fresh coordinator and every site's worker and SuperNode (the demo, a trial).

A hospital's site worker is a service that runs before any run and after it; here the same processes are started
for the demo. `start_in_background` starts them while the caller does other work (the demo: its reference stage),
as a hospital's sites are already up when a coordinator launches a run; `run` waits for that start to finish, then
launches the run; `stop` stops every process it started.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from semiofed.common.federation.run_config import FederationConfig


class LocalDeployment:
    """A coordinator (TLS, in-memory SuperLink state, site authentication) under `root`, and `site_dirs` joined to it
    as background site workers, each with its SuperNode, all on 127.0.0.1."""

    def __init__(self, root: Path, site_dirs: Sequence[Path]) -> None:
        from semiofed.server.coordinator import Coordinator

        self.coordinator = Coordinator(Path(root))
        self.site_dirs = [Path(d) for d in site_dirs]
        self.start_s: float | None = None
        self.joined: list[Path] = []  # the sites whose worker this deployment started
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Create the coordinator (once), enrol the sites, start the SuperLink and gateway, start every site."""
        from semiofed.client.federation import supernode
        from semiofed.client.site import open_site
        from semiofed.common.federation.processes import free_port

        started = time.monotonic()
        coordinator = self.coordinator
        if not (coordinator.root / "coordinator.json").exists():
            coordinator.init(port=free_port(), superlink_state="memory")  # a fresh coordinator: nothing to keep
        sites = [open_site(d) for d in self.site_dirs]
        for site in sites:
            if site.site_id not in coordinator.state().enrolled:
                coordinator.enroll(site.layout.public_key, name=site.site_id)
        coordinator.start(port=free_port())
        for site in sites:
            supernode.join(site.layout.root, superlink=f"127.0.0.1:{coordinator.state().port}",
                           ca=coordinator.tls.ca_certificate, clientapp_port=free_port(), background=True)
            self.joined.append(site.layout.root)
        self.start_s = time.monotonic() - started

    def start_in_background(self) -> "LocalDeployment":
        """`start` in a thread; `run` (or `wait_started`) waits for it and raises what it raised."""

        def start() -> None:
            try:
                self.start()
            except BaseException as exc:  # pylint: disable=broad-exception-caught - re-raised by wait_started
                self._error = exc

        self._thread = threading.Thread(target=start, name="federation-start", daemon=True)
        self._thread.start()
        return self

    def wait_started(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def run(self, config: FederationConfig, on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Launch the federated run once the deployment is up; returns its run.json."""
        self.wait_started()
        if self.start_s is None:
            self.start()
        return self.coordinator.run(config, on_line=on_line)

    def stop(self) -> None:
        """Stop the sites it started (together), then the coordinator; a start still going on is waited for first.
        Sites first: a stopping SuperNode tells the SuperLink it leaves."""
        from semiofed.client.federation import supernode

        try:
            self.wait_started()
        except BaseException:  # pylint: disable=broad-exception-caught - what did start is stopped below all the same
            pass
        try:
            supernode.leave_all(self.joined)
        finally:
            self.coordinator.stop()
