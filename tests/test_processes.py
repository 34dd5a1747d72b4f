"""Stopping the long-running processes a machine runs for several sites (a trial, the demo): all at once."""

from __future__ import annotations

import sys
import time

from semiofed.common.federation.processes import is_running, start_detached, stop, stop_all

# a process that takes half a second to shut down on SIGTERM, with a child in its group, like a site worker
_SLOW_TO_STOP = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def bye(*_):
    time.sleep(0.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print(child.pid, flush=True)
time.sleep(600)
"""
_DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"


def _start(tmp_path, name: str, code: str) -> int:
    log = tmp_path / f"{name}.log"
    pid = start_detached([sys.executable, "-c", code], log_file=log, pid_file=tmp_path / f"{name}.pid")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not log.read_text().strip():
        time.sleep(0.05)
    assert log.read_text().strip(), f"{name} did not start"
    return pid


def test_stop_all_stops_every_group_with_its_children_and_kills_what_ignores_sigterm(tmp_path):
    slow = [_start(tmp_path, f"site-{k}", _SLOW_TO_STOP) for k in range(3)]
    children = [int((tmp_path / f"site-{k}.log").read_text().split()[0]) for k in range(3)]
    deaf = _start(tmp_path, "deaf", _DEAF)
    gone = _start(tmp_path, "gone", "print('x', flush=True)")
    deadline = time.monotonic() + 10
    while is_running(gone) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        stopped = stop_all([*slow, None, gone, deaf], timeout=3.0)
        assert sorted(stopped) == sorted([*slow, deaf])  # None and the process that had ended are not "stopped"
        assert not any(is_running(p) for p in [*slow, *children, deaf])
    finally:
        for pid in [*slow, *children, deaf]:
            stop(pid, timeout=1.0)


def test_stop_is_stop_all_of_one(tmp_path):
    pid = _start(tmp_path, "one", _SLOW_TO_STOP)
    assert stop(pid) is True
    assert not is_running(pid)
    assert stop(pid) is False  # nothing left to stop
