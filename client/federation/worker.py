"""The site worker: one long-lived process per site that runs the installed semiofed ClientApp for every message.

Flower's own `flwr-clientapp` unpacks the run's app package (FAB) and imports
the ClientApp it names with the FAB first on `sys.path`, so whoever submits a
run could execute any code at the hospital. `site join` instead starts the
SuperNode with `--isolation process` and this worker beside it:

- it takes each task from the SuperNode's local Runtime API (AcquireTask,
  authenticated with a per-site secret only the SuperNode and the worker read),
  pulls the message, its context and the FAB with Flower's own functions;
- it checks the FAB (configuration only: `pyproject.toml` naming semiofed's
  ClientApp, no code, no other file) and refuses the task otherwise;
- it calls the ClientApp object of the semiofed installed here, in this
  process: nothing of the FAB is unpacked, put on `sys.path` or imported;
- a failed task (including a refusal) answers with one fixed text and the
  worker goes on with the next one; torch and the site's code are imported
  once, not once per message.

The worker starts the SuperNode as its child and stops with it.
"""

from __future__ import annotations

import _thread
import argparse
import io
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Sequence

from semiofed.client.federation.supernode_process import POLL_S as SUPERNODE_POLL_S
from semiofed.client.federation.supernode_process import TASK_NOTICE_FD

log = logging.getLogger(__name__)

CLIENTAPP_REF = "semiofed.client.federation.client_app:app"
FAB_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})  # what a configuration-only Flower app contains
POLL_S = 0.2  # without the SuperNode's notices (Flower's SuperExec polls every second)
SERVING = "worker serving the SuperNode's tasks"  # logged once the warm-up is done (bench_demo_federation.py waits for it)
IDLE_POLL_S = 1.0  # with them: a safety net only, each message is announced
SECRET_FILE = "runtime.secret"
SECRET_BYTES = 32


class ForeignApp(Exception):
    """The run's app package is not configuration for the installed semiofed."""


def check_fab(content: bytes) -> dict[str, Any]:
    """The FAB's pyproject.toml, after checking that it holds configuration only and names semiofed's ClientApp."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            names = set(fab.namelist())
            extra = sorted(names - FAB_FILES)
            if extra:
                raise ForeignApp(f"the run's app package ships {len(extra)} file(s) beyond its configuration "
                                 f"({', '.join(extra[:3])}); this site runs only the semiofed it installed")
            project = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ForeignApp(f"the run's app package is not a readable Flower app ({type(exc).__name__})") from None
    ref = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp")
    if ref != CLIENTAPP_REF:
        raise ForeignApp(f"the run's app names ClientApp {ref!r}; this site runs only {CLIENTAPP_REF}")
    return project


def runtime_secret(keys_dir: Path) -> Path:
    """The per-site secret that authenticates the worker to the SuperNode's Runtime API (created owner-only once)."""
    from semiofed.common.files import write_bytes_atomic

    path = Path(keys_dir) / SECRET_FILE
    if not path.exists():
        write_bytes_atomic(path, secrets.token_hex(SECRET_BYTES).encode("ascii"), mode=0o600)
    return path


def _retry_invoker() -> Any:
    """Retry transport errors briefly; an HTTP error answer is final (Flower's own invoker SIGINTs the process on a
    401, which would stop the whole worker for one stale task token)."""
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    return RetryInvoker(lambda: exponential(max_delay=2.0), httpx.TransportError, max_tries=6, max_time=30.0)


def wait_for_notice(fd: int, timeout: float, stop: threading.Event | None = None) -> bool:
    """Wait up to `timeout` s for the SuperNode's byte on `fd`; drain what is there; True if one came. When the
    SuperNode has closed its end it waits out `timeout` (on `stop`, which its exit or a SIGTERM sets, so a stopping
    worker does not sleep a second first)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return False
    data = b""
    try:
        while chunk := os.read(fd, 65536):  # every byte there: one AcquireTask serves all the messages announced
            data += chunk
    except BlockingIOError:
        pass
    if not data:  # the SuperNode closed its end: it is stopping (the worker stops with it)
        if stop is not None:
            stop.wait(timeout)
        else:
            time.sleep(timeout)
    return bool(data)


class SiteWorker:
    """Takes tasks from a SuperNode's Runtime API and runs the installed ClientApp for each."""

    def __init__(self, runtime_address: str, secret: bytes | None, *, poll_s: float = POLL_S) -> None:
        self.runtime_address = runtime_address
        self.secret = secret
        self.poll_s = poll_s
        self.tasks_done = 0
        self.tasks_failed = 0
        self._cancelled = threading.Event()

    def _client(self, token: str | None = None) -> Any:
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        if token is None:
            interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
            if self.secret:
                interceptors.append(SuperExecAuthHttpInterceptor(master_secret=self.secret,
                                                                 protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
        else:
            interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)]
        return RuntimeHttpClient.from_server_address(server_address=self.runtime_address, insecure=True, root_certificates=None,
                                                     interceptors=interceptors, retry_invoker=_retry_invoker())

    def serve(self, stop: threading.Event, notices: int | None = None) -> None:
        """Take and run tasks until `stop` is set. With `notices` (a pipe's read end the SuperNode writes a byte to
        for each message it stores) the worker asks for a task when told and every IDLE_POLL_S otherwise; without,
        every `poll_s`."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        client = self._client()
        try:
            while not stop.is_set():
                response = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
                if response.HasField("task") and response.token:
                    self.run_task(response.token)
                elif notices is None:
                    stop.wait(self.poll_s)
                else:
                    wait_for_notice(notices, IDLE_POLL_S, stop)
        finally:
            client.close()

    def _heartbeat_fn(self, client: Any):
        import httpx
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611

        def beat() -> bool:
            try:
                answer = client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
            except httpx.HTTPError:
                return False
            if not answer.success and not self._cancelled.is_set():
                self._cancelled.set()
                _thread.interrupt_main()  # stops the task the SuperNode no longer waits for, not the worker
            return True

        return beat

    def run_task(self, token: str) -> bool:
        """One message: pull it, check the app, run the installed ClientApp, push the reply; True when it succeeded."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        from semiofed.client.federation.client_app import DeclinedInSecureRound
        from semiofed.client.federation.egress import failure_text

        client = self._client(token)
        self._cancelled.clear()
        heartbeat = HeartbeatSender(self._heartbeat_fn(client))
        message = context = reply = None
        status, details = SubStatus.FAILED, "the site could not run this task"
        try:
            heartbeat.start()
            message, context, _run, fab = pull_task_input(client)
            check_fab(fab.content)
            from semiofed.client.federation.client_app import app

            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except (Exception, KeyboardInterrupt) as exc:  # pylint: disable=broad-exception-caught
            if isinstance(exc, KeyboardInterrupt) and not self._cancelled.is_set():
                raise
            log.error("task failed: %s", exc, exc_info=not isinstance(exc, (ForeignApp, KeyboardInterrupt)))
            kind = message.metadata.message_type if message is not None else "task"
            if message is not None:
                # a decline inside a SecAgg+ round: the text the egress policy let out in the fit reply, and only it
                reason = str(exc) if isinstance(exc, DeclinedInSecureRound) else failure_text(kind)
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None and not self._cancelled.is_set():
                    push_message(client, reply, context)
                push_task_output(client=client, context=context, sub_status=status, details=details)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                log.error("could not push the task's reply: %s", exc)
                status = SubStatus.FAILED
            heartbeat.stop()
            client.close()
        ok = status == SubStatus.COMPLETED
        self.tasks_done += ok
        self.tasks_failed += not ok
        return ok


def warm_up() -> None:
    """Import the ClientApp and the training code (torch, Opacus) while the site waits for its first message, so
    that the first message of a run does not pay for them (torch about 5 s and Opacus' accountants about 6 s, more
    with several sites on one machine: the budget query, the first message of a run, took 17 s at 3 sites)."""
    try:
        import semiofed.client.federation.client_app  # noqa: F401
        import semiofed.client.training.federated_round  # noqa: F401
        from semiofed.common.privacy.accountant import load_accountants

        load_accountants()
        import torch

        probe = [torch.nn.Parameter(torch.zeros(1))]
        torch.optim.Adam(probe)  # an optimizer's first construction imports torch._dynamo: 1-2 s of the first fit
        torch.optim.SGD(probe, lr=0.1)
    except Exception as exc:  # pylint: disable=broad-exception-caught - the first task imports them again, and says why
        log.warning("could not import the training code ahead of the first message: %s", exc)


def run(site_dir: Path, *, superlink: str, ca: Path, runtime_port: int, run_epsilon: float = 0.0,
        run_window_days: float = 30.0, poll_s: float = SUPERNODE_POLL_S) -> int:
    """Start the site's SuperNode (process isolation) and serve its tasks until either stops; returns an exit code."""
    from semiofed.client.federation.supernode import LOG_FILE, supernode_command
    from semiofed.client.site import open_site
    from semiofed.common.federation import processes

    site = open_site(site_dir)
    secret_file = runtime_secret(site.layout.keys_dir)
    command = supernode_command(site, superlink=superlink, ca=ca, clientapp_port=runtime_port, run_epsilon=run_epsilon,
                                run_window_days=run_window_days, secret_file=secret_file, poll_s=poll_s)
    stop = threading.Event()
    notices, notice_end = os.pipe()  # the SuperNode writes a byte for each message it stores (supernode_process)
    os.set_blocking(notices, False)
    supernode = subprocess.Popen(command, env=processes.flower_env({TASK_NOTICE_FD: str(notice_end)}),
                                 pass_fds=(notice_end,))
    os.close(notice_end)

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    warming = threading.Thread(target=warm_up, name="warm-up", daemon=True)
    warming.start()  # while the SuperNode starts
    try:
        processes.wait_listening("127.0.0.1", runtime_port, pid=supernode.pid, timeout=60.0,
                                 log_file=site.layout.root / "logs" / LOG_FILE)
        # serving imports Flower's client modules too: two threads importing them at once can meet a half-initialised
        # module (flwr.client's ClientFnExt), which failed the warm-up and the first task's import alike
        warming.join()
        worker = SiteWorker(f"127.0.0.1:{runtime_port}", secret_file.read_bytes())
        watcher = threading.Thread(target=lambda: (supernode.wait(), stop.set()), daemon=True)
        watcher.start()
        log.info("site %s: %s (pid %d)", site.site_id, SERVING, os.getpid())
        while not stop.is_set():
            try:
                worker.serve(stop, notices)
            except KeyboardInterrupt:
                stop.set()
            except Exception as exc:  # pylint: disable=broad-exception-caught
                if stop.is_set():
                    break
                log.warning("the SuperNode's Runtime API did not answer (%s); retrying", exc)
                stop.wait(1.0)
    finally:
        if supernode.poll() is None:
            supernode.terminate()
            try:
                supernode.wait(timeout=15)
            except subprocess.TimeoutExpired:
                supernode.kill()
                supernode.wait()
        os.close(notices)
    return 0 if supernode.returncode in (0, -signal.SIGTERM) else int(supernode.returncode or 1)


def command(site_dir: Path, *, superlink: str, ca: Path, runtime_port: int, run_epsilon: float = 0.0,
            run_window_days: float = 30.0, poll_s: float = SUPERNODE_POLL_S) -> list[str]:
    """The command line that runs the worker (and its SuperNode) for a site."""
    return [sys.executable, "-m", __name__, "--site-dir", str(Path(site_dir).resolve()), "--superlink", superlink,
            "--ca", str(Path(ca).resolve()), "--runtime-port", str(runtime_port), "--run-epsilon", repr(float(run_epsilon)),
            "--run-window-days", repr(float(run_window_days)), "--poll-interval", repr(float(poll_s))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.splitlines()[0])
    parser.add_argument("--site-dir", required=True, type=Path)
    parser.add_argument("--superlink", required=True)
    parser.add_argument("--ca", required=True, type=Path)
    parser.add_argument("--runtime-port", required=True, type=int)
    parser.add_argument("--run-epsilon", type=float, default=0.0)
    parser.add_argument("--run-window-days", type=float, default=30.0)
    parser.add_argument("--poll-interval", type=float, default=SUPERNODE_POLL_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    from semiofed.common.errors import SemiofedError

    try:
        return run(args.site_dir, superlink=args.superlink, ca=args.ca, runtime_port=args.runtime_port,
                   run_epsilon=args.run_epsilon, run_window_days=args.run_window_days, poll_s=args.poll_interval)
    except SemiofedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: with torch, Opacus and Flower loaded it took 0.7 s alone and 1.5-2 s
    for 3 sites stopping together on 2 cores. The worker holds nothing to finish by then (a task's files are written
    atomically as it runs, and its SuperNode has stopped); its log and output are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
