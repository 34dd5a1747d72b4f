"""Long-running Flower processes (SuperLink, SuperNode): start detached, wait until they listen, stop them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from semiofed.common.errors import SemiofedError
from semiofed.common.files import OWNER_ONLY_FILE, make_private_dir, write_bytes_atomic


def flower_bin(name: str) -> str:
    """A Flower console script installed next to this Python (the venv's bin), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# A Flower message is a tree of objects (each array, each record), pulled and pushed one request each; Flower's own
# default is 2 requests at a time (its environment variables, read when flwr is imported)
OBJECT_TRANSFERS = {"FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS": "8", "FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES": "8"}


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: the venv's bin first on PATH (the SuperLink starts `flower-superexec`),
    and OBJECT_TRANSFERS unless the operator set them."""
    env = {**OBJECT_TRANSFERS, **os.environ}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def start_detached(command: Sequence[str], *, log_file: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    """Start `command` in its own session (so stopping it stops its children), logging to `log_file`."""
    make_private_dir(log_file.parent)
    with open(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, OWNER_ONLY_FILE), "ab") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env or flower_env(), start_new_session=True)
    write_bytes_atomic(pid_file, f"{process.pid}\n".encode())
    return process.pid


def is_running(pid: int | None, *, expect: str | None = None) -> bool:
    """True when a process with this pid exists (not a zombie of ours) and, with `expect`, its command line has it.

    `expect` guards against a stale pid file whose pid now belongs to another program (after a reboot).
    """
    if not pid:
        return False
    if expect is not None:
        try:
            if expect not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return False
        except OSError:
            pass  # no /proc: fall back to the existence check
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file`, or None."""
    try:
        return int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None


def wait_listening(host: str, port: int, *, pid: int, timeout: float, log_file: Path) -> None:
    """Wait until `host:port` accepts connections; fail clearly if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid):
            tail = log_file.read_text(errors="replace")[-1500:] if log_file.exists() else ""
            raise SemiofedError(f"the process exited while starting (log {log_file}):\n{tail}",
                                "read the log; a port in use or a bad certificate are the usual causes")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise SemiofedError(f"nothing listens on {host}:{port} after {timeout:.0f} s (log {log_file})", "read the log")


def stop(pid: int | None, *, timeout: float = 15.0) -> bool:
    """SIGTERM the process group of `pid`, then SIGKILL what is left; True if something was stopped."""
    return bool(stop_all([pid], timeout=timeout))


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    """Send `sig` to the process group of `pid`; False if it is gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, sig)
    return True


def stop_all(pids: Sequence[int | None], *, timeout: float = 15.0) -> list[int]:
    """`stop` for several processes at once: all are asked (SIGTERM) together and waited for together, so stopping
    n sites takes as long as the slowest, not the sum; returns the pids that were running."""
    running = [pid for pid in pids if pid is not None and is_running(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [pid for pid in running if is_running(pid) and _signal_group(pid, sig)]
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [pid for pid in left if is_running(pid)]
        if not left:
            break
    for pid in running:  # children that outlived their leader
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return running


def check_port_free(host: str, port: int) -> None:
    """Raise a clear error when something already listens on host:port."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SemiofedError(f"port {port} on {host} is in use ({exc.strerror})",
                                "stop what uses it, or choose another --port") from None


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port now."""
    try:
        check_port_free(host, port)
    except SemiofedError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for tests and the demo)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
