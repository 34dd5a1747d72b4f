"""What docs/deployment.md says of the files in deploy/ and of the coordinator's command line, read from the files.

Each check is one an operator's edit could silently break: a site container that sees another hospital's data or
writes to its videos, an image or a service that runs as root, a SuperLink that installs a run's dependencies.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

from semiofed.server.coordinator import LOOPBACK, Coordinator

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_the_image_runs_as_an_unprivileged_user_and_holds_no_model_files():
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    entry = next(i for i, ln in enumerate(lines) if ln.startswith("ENTRYPOINT"))
    assert max(i for i, ln in enumerate(lines) if ln.startswith("USER ")) < entry
    copies = " ".join(ln for ln in lines if ln.startswith(("COPY", "ADD")))
    assert not re.search(r"\.(task|npz|tflite)\b|models", copies), copies


def test_each_site_container_sees_only_its_own_site_directory_and_reads_the_rest():
    services = _compose()["services"]
    sites = {name: s for name, s in services.items() if name.startswith("site-")}
    assert len(sites) == 3
    for name, service in sites.items():
        assert not service.get("privileged") and not service.get("cap_add") and not service.get("ports")
        writable = [v for v in service["volumes"] if not v.get("read_only")]
        assert [v["target"] for v in writable] == ["/site"], (name, writable)
        assert writable[0]["source"].endswith(f"/{name}"), writable  # its own directory, no other hospital's
        for volume in service["volumes"]:
            others = [s for s in sites if s != name]
            assert not any(volume["source"].endswith(f"/{o}") for o in others), (name, volume)
            if volume["target"] != "/site":
                assert volume["read_only"] is True, (name, volume)
        assert next(v for v in service["volumes"] if v["target"] == "/videos")["source"].endswith(f"videos/{name}")
    assert not services["coordinator"].get("ports"), "the coordinator's port is published only on purpose"


def _unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep systemd's case
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser["Service"]


def test_the_services_are_hardened_and_write_only_their_own_directory():
    for name, own in (("semiofed-site.service", "/srv/semiofed/site"),
                      ("semiofed-coordinator.service", "/srv/semiofed/coordinator")):
        service = _unit(name)
        assert service["User"] not in ("root", "0"), name
        assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict", name
        assert service["ReadWritePaths"].split() == [own], name
        assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == "", name
        assert service["UMask"] == "0077" and service["PrivateTmp"] == "yes" and service["ProtectHome"] == "yes", name


def test_the_superlink_installs_nothing_a_run_asks_for_and_listens_on_loopback(tmp_path):
    coordinator = Coordinator(tmp_path / "coordinator")
    coordinator.init(port=9092)
    command = coordinator.superlink_command()
    assert "--disable-runtime-dependency-installation" in command
    assert "--enable-supernode-auth" in command
    assert command[command.index("--host") + 1] == LOOPBACK
    assert "--insecure" not in command and "--ssl-certfile" in command
