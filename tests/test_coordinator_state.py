"""The coordinator's SuperLink state: a database that survives restarts (the default), or Flower's in-memory state
(faster rounds) that a restart forgets, so every enrolled site is registered again when the SuperLink starts."""

from __future__ import annotations

import pytest

from semiofed.client.site import init_site
from semiofed.common.federation.processes import free_port, is_running
from semiofed.server.control_client import ControlApiError, ControlClient
from semiofed.server.coordinator import Coordinator, CoordinatorError


def test_an_unknown_superlink_state_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(CoordinatorError, match="not one of database, memory"):
        Coordinator(tmp_path / "c").init(port=free_port(), superlink_state="redis")
    assert not (tmp_path / "c").exists()


def test_an_in_memory_superlink_registers_every_enrolled_site_at_each_start(tmp_path):
    database = Coordinator(tmp_path / "db")
    database.init(port=free_port())
    assert str(database.database) in database.superlink_command()
    coordinator = Coordinator(tmp_path / "mem")
    coordinator.init(port=free_port(), superlink_state="memory")
    assert ":flwr-in-memory:" in coordinator.superlink_command()
    assert str(coordinator.database) not in coordinator.superlink_command()
    site = init_site(tmp_path / "site-a", "site-a")
    coordinator.enroll(site.layout.public_key, name="site-a")
    try:
        coordinator.start()
        first = dict(coordinator.state().registered)
        assert set(first) == {"site-a"} and first["site-a"]
        coordinator.stop()
        coordinator.start()  # a SuperLink in memory has forgotten the site: it is registered again, not skipped
        assert set(coordinator.state().registered) == {"site-a"}
        assert coordinator.site_status()["site-a"] != "unknown"  # the node the SuperLink knows now, not a stale id
        # the in-process Control API client trusts the coordinator's CA only: another CA's client is refused
        other = Coordinator(tmp_path / "other")
        other.init(port=free_port())
        stranger = ControlClient(f"127.0.0.1:{coordinator.state().superlink_port}", other.tls.ca_certificate)
        with pytest.raises(ControlApiError, match="did not answer ListNodes") as refused:
            stranger.node_status()
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        stranger.close()
        with coordinator.control() as control, pytest.raises(ControlApiError, match="not a NIST elliptic-curve key|cannot read"):
            bad = tmp_path / "rsa.pub"
            bad.write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDx site\n")
            control.register(bad)
    finally:
        pid = coordinator.pid()
        coordinator.stop()
    assert not is_running(pid)


def test_the_superexec_looks_for_a_run_every_quarter_second_unless_the_operator_says_otherwise(tmp_path, monkeypatch):
    coordinator = Coordinator(tmp_path / "c")
    coordinator.init(port=free_port())
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", raising=False)
    assert coordinator.flwr_env()["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.25"
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "2")
    assert coordinator.flwr_env()["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "2"
