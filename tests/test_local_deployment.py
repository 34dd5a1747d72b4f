"""The demo's deployment started ahead of the run (server/local_deployment.py): a start that fails says why where
the run would begin, and a stage that fails before the run leaves no process behind."""

from __future__ import annotations

import pytest

from semiofed.client.federation.supernode import PID_FILE
from semiofed.client.site import init_site
from semiofed.common.errors import SemiofedError
from semiofed.common.federation.processes import is_running, read_pid
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.server.demo import _stopped_on_error
from semiofed.server.local_deployment import LocalDeployment


def test_a_failed_stage_before_the_run_stops_the_sites_and_the_coordinator_started_for_it(tmp_path):
    sites = [init_site(tmp_path / "sites" / name, name, PrivacyPolicy()).layout.root for name in ("site-a", "site-b")]
    deployment = LocalDeployment(tmp_path / "coordinator", sites).start_in_background()
    with pytest.raises(RuntimeError, match="the reference stage failed"):
        with _stopped_on_error(deployment):
            deployment.wait_started()  # the start is under way or done when a later stage fails
            workers = [read_pid(site / PID_FILE) for site in sites]
            assert deployment.coordinator.running() and all(is_running(pid) for pid in workers)
            raise RuntimeError("the reference stage failed")
    assert not deployment.coordinator.running() and not deployment.coordinator.gateway_running()
    assert not any(is_running(pid) for pid in workers)


def test_a_start_that_fails_in_the_background_is_reported_when_the_run_would_begin(tmp_path):
    deployment = LocalDeployment(tmp_path / "coordinator", [tmp_path / "no-such-site"]).start_in_background()
    with pytest.raises(SemiofedError) as raised:
        deployment.run(None)  # type: ignore[arg-type] - never reached: the start failed
    assert "no-such-site" in str(raised.value)
    deployment.stop()  # what did start (the coordinator's files, no process) is left stopped, without an error
    assert not deployment.coordinator.running()
