"""The site's SuperNode polls fast only while a run is going on (client/federation/supernode_process.py).

Flower's SuperNode loop sleeps 3 s whenever it finds no message; the poll
clock shortens that sleep after a message was pulled or a reply pushed, and
gives Flower's 3 s back once the site has been idle for the active window.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from semiofed.client.federation import supernode_process
from semiofed.client.federation.supernode_process import (
    FLOWER_IDLE_SLEEP_S,
    FLOWER_REPLY_SLEEP_S,
    PollClock,
    check_flower,
    install,
    split_argv,
)


class FakeTime:
    def __init__(self) -> None:
        self.now, self.slept = 1000.0, []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_idle_poll_is_fast_only_within_the_active_window_after_a_message():
    t = FakeTime()
    clock = PollClock(poll_s=0.25, reply_s=0.05, active_window_s=60.0, now=lambda: t.now, sleep=t.sleep)
    clock.sleep(FLOWER_IDLE_SLEEP_S)  # no message yet: Flower's own 3 s, no more requests than Flower makes
    clock.mark_active()  # a message was pulled
    clock.sleep(FLOWER_IDLE_SLEEP_S)
    clock.sleep(FLOWER_REPLY_SLEEP_S)
    clock.sleep(1.7)  # any other sleep of the loop is left as it is
    t.now += 61.0  # idle for longer than the window
    clock.sleep(FLOWER_IDLE_SLEEP_S)
    assert t.slept == [3.0, 0.25, 0.05, 1.7, 3.0]
    assert clock.monotonic is not None and clock.time() > 0  # the rest of the time module, as it is


def test_a_poll_interval_outside_flowers_range_is_refused():
    for bad in (0.0, -1.0, 3.5):
        with pytest.raises(ValueError, match="poll interval"):
            PollClock(poll_s=bad)
    proc = subprocess.run([sys.executable, "-m", "semiofed.client.federation.supernode_process", "--poll-interval", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == ["error: poll interval 0.0 s is not in (0, 3] s"]
    assert split_argv(["--superlink", "h:1", "--poll-interval", "0.5", "--insecure"]) == (0.5, ["--superlink", "h:1", "--insecure"])


def test_the_clock_fits_the_installed_flower_and_refuses_another_loop(tmp_path, monkeypatch):
    from flwr.supernode import start_client_internal

    check_flower(start_client_internal)  # flwr 1.41's loop has the sleeps and steps the clock stands in for
    (tmp_path / "other_loop.py").write_text("import time\n\ndef loop():\n    time.sleep(5)\n")  # another shape
    monkeypatch.syspath_prepend(str(tmp_path))
    import other_loop

    with pytest.raises(RuntimeError, match="does not fit"):
        check_flower(other_loop)


def test_installed_in_flowers_loop_a_pulled_message_or_pushed_reply_marks_the_site_active(monkeypatch):
    from flwr.supernode import start_client_internal as loop

    pulled = iter([None, 42])
    monkeypatch.setattr(loop, "_pull_and_store_message", lambda **kw: next(pulled))
    monkeypatch.setattr(loop, "_push_messages", lambda **kw: None)
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)  # restored after the test
    t = FakeTime()
    clock = PollClock(poll_s=0.25, now=lambda: t.now, sleep=t.sleep)
    install(clock)
    assert loop.time is clock
    assert loop._pull_and_store_message() is None and not clock.active()  # nothing pulled: still idle
    assert loop._pull_and_store_message() == 42 and clock.active()
    t.now += 10 * supernode_process.ACTIVE_WINDOW_S
    loop._push_messages()
    assert clock.active()


def test_site_join_starts_flowers_supernode_through_the_poll_clock(tmp_path):
    from semiofed.client.federation.supernode import supernode_command
    from semiofed.client.site import init_site
    from semiofed.server.certificates import TlsFiles, make_ca

    site = init_site(tmp_path / "site", "site-a")
    (tmp_path / "tls").mkdir()
    files = TlsFiles(*(tmp_path / "tls" / n for n in ("ca.pem", "ca.key", "superlink.pem", "superlink.key")))
    make_ca(files)
    command = supernode_command(site, superlink="127.0.0.1:9092", ca=files.ca_certificate, clientapp_port=9999, poll_s=0.5)
    assert command[:5] == [sys.executable, "-m", "semiofed.client.federation.supernode_process", "--poll-interval", "0.5"]
    assert "--isolation" in command and command[command.index("--isolation") + 1] == "process"


def test_the_supernode_announces_each_stored_message_to_the_worker_over_its_pipe(monkeypatch):
    """A message pulled (and stored with its task) writes one byte the worker waits on; no message, no byte; a full
    pipe or a worker gone never blocks or breaks the SuperNode's loop."""
    import os

    from flwr.supernode import start_client_internal as loop

    from semiofed.client.federation.supernode_process import task_notifier
    from semiofed.client.federation.worker import wait_for_notice

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    pulled = iter([None, 7, 8])
    monkeypatch.setattr(loop, "_pull_and_store_message", lambda **kw: next(pulled))
    monkeypatch.setattr(loop, "_push_messages", lambda **kw: None)
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    install(PollClock(), task_notifier(write_end))
    loop._pull_and_store_message()
    assert not wait_for_notice(read_end, 0.05)  # nothing pulled: the worker is not woken
    loop._pull_and_store_message()
    assert wait_for_notice(read_end, 1.0)
    notify = task_notifier(write_end)
    for _ in range(100_000):  # far more than a pipe holds: the SuperNode never blocks on a worker that is slow
        notify()
    assert wait_for_notice(read_end, 1.0)
    os.close(read_end)
    loop._pull_and_store_message()  # the worker is gone: no BrokenPipeError in the SuperNode's loop
    os.close(write_end)


def test_a_worker_whose_supernode_has_stopped_does_not_sit_out_its_poll_interval():
    """The SuperNode closes its end of the notice pipe when it stops; the worker then waits on its stop event (which
    the SuperNode's exit and SIGTERM set), not a fixed sleep: stopping 3 sites took 1.9 s, mostly that sleep."""
    import os
    import threading
    import time

    from semiofed.client.federation.worker import wait_for_notice

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.close(write_end)  # the SuperNode is gone
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert not wait_for_notice(read_end, 60.0, stop)
    assert time.monotonic() - started < 30.0  # not the 60 s a plain sleep would take
    os.close(read_end)


def test_the_worker_warm_up_imports_the_clientapp_torch_and_the_accountants_and_leaves_logging_alone():
    """What a budget query (a run's first message) would otherwise import: the ClientApp, torch and Opacus'
    accountants (whose import calls logging.basicConfig), in a fresh interpreter as a worker starts."""
    code = (
        "import logging, sys\n"
        "from semiofed.client.federation.worker import warm_up\n"
        "before = list(logging.getLogger().handlers)\n"
        "warm_up()\n"
        "wanted = ('torch', 'opacus.accountants', 'semiofed.client.federation.client_app',\n"
        "          'semiofed.client.training.federated_round')\n"
        "print([m for m in wanted if m not in sys.modules], logging.getLogger().handlers == before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] True", out.stderr[-2000:]
