"""Attacks on the deployment, tried with real processes on 127.0.0.1: a site that talks to the coordinator's
Control API, a coordinator that ships code in the run's app package, a local process that takes the site's tasks.

One coordinator (SuperLink on loopback + the Fleet-only gateway) and one site (worker + SuperNode) serve the
module; the fixture's teardown stops every process, also when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from dp_synthetic import populate
from site_files import readable_by_others
from semiofed.client.federation import supernode
from semiofed.client.federation.egress import failure_text
from semiofed.client.federation.worker import CLIENTAPP_REF, ForeignApp, check_fab
from semiofed.client.site import init_site
from semiofed.common.federation.processes import flower_bin, flower_env, free_port, is_running, read_pid
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.server.coordinator import CONNECTION, Coordinator
from semiofed.server.gateway import REFUSED


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator = Coordinator(root / "coordinator")
        self.coordinator.init(port=free_port())
        self.site = init_site(root / "site-a", "site-a", PrivacyPolicy(max_epsilon=10.0))
        populate(self.site.layout.records_dir, n_patients=6, dim=16, n_snippets=8, seed=3)
        self.coordinator.enroll(self.site.layout.public_key, name="site-a")
        offline = init_site(root / "site-b", "site-b", PrivacyPolicy(max_epsilon=10.0))  # enrolled, never joins
        self.coordinator.enroll(offline.layout.public_key, name="site-b")

    @property
    def site_address(self) -> str:
        """What a site is given: the gateway's address (and the CA)."""
        return f"127.0.0.1:{self.coordinator.state().port}"

    def flwr_as_site(self, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
        """The `flwr` CLI pointed at the site-facing address with the CA, as any site could configure it."""
        home = tmp / "site-flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(f'[superlink]\ndefault = "c"\n\n[superlink.c]\naddress = "{self.site_address}"\n'
                                          f'root-certificates = "{self.coordinator.tls.ca_certificate}"\n')
        return subprocess.run([flower_bin("flwr"), *args], env=flower_env({"FLWR_HOME": str(home)}), capture_output=True,
                              text=True, timeout=120)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("adversaries"))
    try:
        dep.coordinator.start()
        supernode.join(dep.site.layout.root, superlink=dep.site_address, ca=dep.coordinator.tls.ca_certificate,
                       clientapp_port=free_port(), background=True)
        dep.coordinator.wait_for_sites(1, timeout=60)
        yield dep
    finally:
        supernode.leave(dep.site.layout.root)
        dep.coordinator.stop()
        pids = [read_pid(dep.site.layout.root / supernode.PID_FILE), dep.coordinator.pid(), dep.coordinator.gateway_pid()]
        assert not any(is_running(p) for p in pids), "a process of the test outlived its teardown"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


def _process_tree(pid: int) -> set[int]:
    """pid and every descendant (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += children.get(p, [])
    return tree


def _listening_sockets_of(pids: set[int]) -> set[str]:
    """'address:port' (hex, as /proc/net shows them) of every TCP socket in LISTEN held by these processes."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.add(fields[1])
    return found


def test_a_site_cannot_use_the_control_api(deployment, tmp_path):
    dep = deployment
    # listing runs and registering a node key, with the CA and the address every site has: refused
    listing = dep.flwr_as_site(["ls", "c", "--format", "json"], tmp_path)
    assert '"success": false' in listing.stdout and "403" in listing.stdout, listing.stdout + listing.stderr
    rogue = init_site(tmp_path / "rogue", "rogue", PrivacyPolicy(max_epsilon=10.0))
    register = dep.flwr_as_site(["supernode", "register", str(rogue.layout.public_key), "c", "--format", "json"], tmp_path)
    assert '"success": false' in register.stdout and "403" in register.stdout, register.stdout + register.stderr
    # ... and the coordinator, on loopback, still knows only its two enrolled sites
    listed = dep.coordinator._flwr(["supernode", "ls", CONNECTION, "--format", "json"])
    assert len(json.loads(listed.stdout[listed.stdout.find("{"):])["nodes"]) == 2, listed.stdout

    with httpx.Client(base_url=f"https://{dep.site_address}", verify=str(dep.coordinator.tls.ca_certificate)) as client:
        for method, path in [("POST", "/v1/control/list-runs"), ("POST", "/v1/control/stop-run"),
                             ("POST", "/v1/runtime/acquire-task"), ("GET", "/docs"), ("GET", "/openapi.json"),
                             ("GET", "/v1/fleet/pull-messages"), ("POST", "/v1/fleet/../control/list-runs")]:
            answer = client.request(method, path, content=b"")
            assert answer.status_code == 403 and answer.text == REFUSED, (method, path, answer.status_code)
        # a Fleet route is forwarded: Flower itself answers (an unsigned call is not one of ours to refuse)
        fleet = client.post("/v1/fleet/register-node", content=b"")
        assert fleet.text != REFUSED
    # the SuperLink (Fleet, Control and Runtime APIs) listens on loopback only
    assert _listening_addresses(dep.coordinator.state().superlink_port) == {"0100007F"}
    assert "refused POST /v1/control/list-runs" in dep.coordinator.gateway_log_file.read_text()


def _foreign_app(root: Path, marker: Path, out: Path, *, clientapp: str = "evil_client:app") -> Path:
    """A run app that ships code: its ClientApp would read the site's secrets and leave a marker."""
    app = root / "evil-app"
    app.mkdir()
    (app / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "evil-app"
        version = "1.0.0"
        license = "Apache-2.0"
        dependencies = []

        [tool.hatch.build.targets.wheel]
        packages = ["."]

        [tool.flwr.app]
        publisher = "evil"

        [tool.flwr.app.components]
        serverapp = "evil_server:app"
        clientapp = "{clientapp}"

        [tool.flwr.app.config]
        out = "{out}"
        """))
    (app / "evil_client.py").write_text(textwrap.dedent(f"""\
        from pathlib import Path
        from flwr.clientapp import ClientApp
        Path({str(marker)!r}).write_text("imported at the site")
        app = ClientApp()

        @app.train()
        def train(msg, context):
            site = Path(context.node_config["site-dir"])
            Path({str(marker)!r}).write_bytes((site / "keys" / "pseudonym.key").read_bytes())
            return msg.create_reply(msg.content)
        """))
    (app / "evil_server.py").write_text(textwrap.dedent("""\
        import json, time
        from pathlib import Path
        from flwr.app import Message, RecordDict
        from flwr.serverapp import ServerApp
        app = ServerApp()

        @app.main()
        def main(grid, context):
            deadline = time.time() + 60
            while not list(grid.get_node_ids()) and time.time() < deadline:
                time.sleep(1)
            messages = [Message(content=RecordDict(), dst_node_id=n, message_type="train") for n in grid.get_node_ids()]
            replies = list(grid.send_and_receive(messages, timeout=120))
            Path(context.run_config["out"]).write_text(json.dumps(
                [r.error.reason if r.has_error() else "answered" for r in replies]))
        """))
    return app


def test_code_in_the_run_app_never_runs_at_a_site(deployment, tmp_path):
    dep = deployment
    marker, out = tmp_path / "stolen.txt", tmp_path / "replies.json"
    app = _foreign_app(tmp_path, marker, out)
    result = dep.coordinator._flwr(["run", str(app), CONNECTION, "--stream"], timeout=300)
    assert out.is_file(), result.stdout[-2000:] + result.stderr[-2000:]
    replies = json.loads(out.read_text())
    # the site answered, with the one fixed failure text, and nothing of the package was imported or run
    assert replies == [failure_text("train")], replies
    assert not marker.exists(), "code from the run's app package ran at the site"
    assert "beyond its configuration" in (dep.site.layout.root / "logs" / supernode.LOG_FILE).read_text()
    assert is_running(read_pid(dep.site.layout.root / supernode.PID_FILE)), "the worker died on a refused task"


def test_the_worker_refuses_any_app_package_but_semiofed_configuration(deployment, tmp_path):
    from flwr.cli.build import build_fab_from_disk

    dep = deployment
    ours = dep.coordinator.write_app(FederationConfig(rounds=1))
    project = check_fab(build_fab_from_disk(ours))
    assert project["tool"]["flwr"]["app"]["components"]["clientapp"] == CLIENTAPP_REF
    # the same configuration pointing at another ClientApp, with no code of its own: refused too
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text((ours / "pyproject.toml").read_text().replace(CLIENTAPP_REF, "os:system"))
    with pytest.raises(ForeignApp, match="names ClientApp"):
        check_fab(build_fab_from_disk(other))
    # semiofed's own module name shipped inside the package (shadowing the installed one): refused
    (other / "pyproject.toml").write_text((ours / "pyproject.toml").read_text())
    shadow = other / "semiofed" / "client" / "federation"
    shadow.mkdir(parents=True)
    (shadow / "client_app.py").write_text("app = None\n")
    with pytest.raises(ForeignApp, match="beyond its configuration"):
        check_fab(build_fab_from_disk(other))
    with pytest.raises(ForeignApp, match="not a readable Flower app"):
        check_fab(b"PK\x03\x04 not a zip")


def test_a_local_process_without_the_runtime_secret_cannot_take_the_sites_tasks(deployment):
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType

    from semiofed.client.federation.worker import SiteWorker

    dep = deployment
    command = Path(f"/proc/{read_pid(dep.site.layout.root / supernode.PID_FILE)}/cmdline").read_bytes().split(b"\0")
    port = int(command[command.index(b"--runtime-port") + 1])
    assert _listening_addresses(port) == {"0100007F"}  # the SuperNode's Runtime API: loopback only
    intruder = SiteWorker(f"127.0.0.1:{port}", secret=None)._client()  # Flower's client, no secret
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            intruder.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
        assert refused.value.response.status_code in (401, 403)
        wrong = SiteWorker(f"127.0.0.1:{port}", secret=b"0" * 64)._client()
        with pytest.raises(httpx.HTTPStatusError):
            wrong.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
        wrong.close()
    finally:
        intruder.close()
    assert (dep.site.layout.keys_dir / "runtime.secret").stat().st_mode & 0o077 == 0
    # nothing connects to a site: every socket its worker and SuperNode listen on is on loopback
    listening = _listening_sockets_of(_process_tree(read_pid(dep.site.layout.root / supernode.PID_FILE)))
    assert listening and all(a.split(":")[0] in ("0100007F", "00000000000000000000000001000000") for a in listening), listening
    # a joined site (SuperNode key, runtime secret, logs, pid file): nothing but the public key is readable by others
    assert readable_by_others(dep.site.layout.root, public=(dep.site.layout.public_key,)) == []


def test_a_run_that_cannot_reach_min_sites_fails_at_once_naming_the_missing_sites(deployment):
    from semiofed.server.coordinator import CoordinatorError

    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(CoordinatorError, match=r"only 1 of 2 enrolled sites are online .*site-b not.*--min-sites 2"):
        deployment.coordinator.run(FederationConfig(min_sites=2), wait_for_sites=3.0, on_line=lines.append)
    assert time.monotonic() - started < 60
    assert lines == ["sites online: site-a; not online: site-b"]


def test_a_plaintext_client_gets_nothing_from_the_sites_address(deployment):
    """A client without TLS (an operator's slip, or a scanner) is cut off before any route is read."""
    dep = deployment
    with httpx.Client(base_url=f"http://{dep.site_address}", timeout=10) as plain:
        for path in ("/v1/fleet/register-node", "/v1/fleet/pull-messages", "/plaintext-probe"):
            with pytest.raises(httpx.TransportError):
                plain.post(path, content=b"")
    # nothing was routed, not even refused (a routed unknown path is logged as refused)
    assert "/plaintext-probe" not in dep.coordinator.gateway_log_file.read_text()


def test_a_site_trusts_only_the_coordinators_ca(deployment, tmp_path):
    """A site given another CA (an impostor coordinator's, or the wrong file) never talks to the coordinator."""
    from semiofed.server.certificates import TlsFiles, make_ca

    dep = deployment
    other = TlsFiles(tmp_path / "ca.pem", tmp_path / "ca.key", tmp_path / "server.pem", tmp_path / "server.key")
    make_ca(other, name="another CA")
    site_b = dep.root / "site-b"  # enrolled: with the right CA it would come online like site-a
    supernode.join(site_b, superlink=dep.site_address, ca=other.ca_certificate, clientapp_port=free_port(),
                   background=True)
    pid = read_pid(site_b / supernode.PID_FILE)
    try:
        status = dep.coordinator.wait_for_sites(2, timeout=15)
        assert status.get("site-b") != "online", status
        log = (site_b / "logs" / supernode.LOG_FILE).read_text(errors="replace")
        assert "certificate verify failed" in log.lower(), log[-2000:]
    finally:
        supernode.leave(site_b)
    assert not is_running(pid)


def test_a_withdrawn_site_key_is_rejected_from_then_on(deployment):
    """deployment.md's step for a leaked key: unregister the site's node at the SuperLink. Runs last in this module:
    site-a stays withdrawn."""
    dep = deployment
    node_id = dep.coordinator.state().registered["site-a"]
    assert dep.coordinator.wait_for_sites(1, timeout=30)["site-a"] == "online"
    withdrawn = dep.coordinator._flwr(["supernode", "unregister", str(node_id), CONNECTION])
    assert withdrawn.returncode == 0, withdrawn.stdout + withdrawn.stderr
    deadline = time.monotonic() + 30
    while dep.coordinator.site_status().get("site-a") == "online" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dep.coordinator.site_status().get("site-a") != "online"
    # the SuperNode still runs with the withdrawn key: no run can use it
    from semiofed.server.coordinator import CoordinatorError

    with pytest.raises(CoordinatorError, match="site-a"):
        dep.coordinator.run(FederationConfig(min_sites=1), wait_for_sites=5.0, on_line=lambda _line: None)
