"""The site's Flower SuperNode process, with the poll intervals of a warm site.

Flower 1.41's SuperNode loop (flwr/supernode/start_client_internal.py) sleeps a
fixed 3 s whenever it asks the SuperLink for a message and finds none, and
0.5 s between looks for the worker's reply. A round is a chain of messages
(budget, SecAgg+ setup, share_keys, collect_masked_vectors, unmask, evaluate),
each sent only when every site answered the last, so a site almost always
finds the next message missing and sleeps the full 3 s: 10-20 s of every round
were these sleeps (docs/benchmarks.md, "seconds per round").

This module runs Flower's own `flower-supernode` entry point unchanged, except
that its `time` is a clock whose sleep is shorter while the site is busy:

- within `active_window_s` of the last message pulled or reply pushed (a run
  is going on) the idle poll is `poll_s` (0.25 s) and the reply poll `reply_s`;
- otherwise Flower's own 3 s, so an idle site asks the SuperLink no more often
  than Flower's SuperNode does.

With `site join` the SuperNode also tells the site worker, over a pipe, when it
has stored a message: the worker takes the task at once instead of asking the
SuperNode's Runtime API ten times a second (each ask is an HTTP request: ten
sites asking at that rate kept two cores busy).

Nothing else of Flower is touched: the Fleet API, TLS, node authentication and
the messages are Flower's. `check_flower()` refuses to start if the loop no
longer has the sleeps this clock stands in for (another Flower version).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import time
from typing import Any, Callable, Sequence

FLOWER_IDLE_SLEEP_S = 3  # flwr 1.41 start_client_internal: `time.sleep(3)` when no message was pulled
FLOWER_REPLY_SLEEP_S = 0.5  # and `time.sleep(0.5)` while waiting for the ClientApp's reply
POLL_S = 0.25  # idle poll while a run is going on: a message waits 0.125 s on average instead of 1.5-3 s
REPLY_S = 0.05  # the reply is in the SuperNode's own memory: looking is free
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.05, 1.0  # Flower's 1 s and 10 s: see install()
ACTIVE_WINDOW_S = 300.0  # a round's next message comes within this (local training longer than it: Flower's 3 s)
POLL_OPTION = "--poll-interval"


class PollClock:
    """Stands in for the `time` module inside Flower's SuperNode loop: sleeps less while the site is in a run."""

    def __init__(self, *, poll_s: float = POLL_S, reply_s: float = REPLY_S, active_window_s: float = ACTIVE_WINDOW_S,
                 now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0 < poll_s <= FLOWER_IDLE_SLEEP_S:
            raise ValueError(f"poll interval {poll_s} s is not in (0, {FLOWER_IDLE_SLEEP_S}] s")
        self.poll_s, self.reply_s, self.active_window_s = float(poll_s), float(reply_s), float(active_window_s)
        self._now, self._sleep = now, sleep
        self._last_active = -float("inf")
        self._lock = threading.Lock()

    def mark_active(self) -> None:
        with self._lock:
            self._last_active = self._now()

    def active(self) -> bool:
        with self._lock:
            return self._now() - self._last_active < self.active_window_s

    def interval(self, seconds: float) -> float:
        """The sleep to take where Flower's loop asks for `seconds`."""
        if seconds == FLOWER_IDLE_SLEEP_S:
            return self.poll_s if self.active() else float(seconds)
        if seconds == FLOWER_REPLY_SLEEP_S:
            return min(self.reply_s, float(seconds))
        return float(seconds)

    def sleep(self, seconds: float) -> None:
        self._sleep(self.interval(seconds))

    def __getattr__(self, name: str) -> Any:  # time.time, time.monotonic, ... as the time module has them
        return getattr(time, name)


def check_flower(module: Any) -> None:
    """Refuse a SuperNode loop that no longer sleeps as Flower 1.41's does (the clock would not apply)."""
    source = inspect.getsource(module)
    for needle in (f"time.sleep({FLOWER_IDLE_SLEEP_S})", f"time.sleep({FLOWER_REPLY_SLEEP_S})",
                   "_pull_and_store_message(", "_push_messages(", "pull_objects("):
        if needle not in source:
            raise RuntimeError(f"this Flower's SuperNode loop has no `{needle}` (flwr 1.41 has): semiofed's poll "
                               "clock does not fit it; install the flwr version semiofed pins")


TASK_NOTICE_FD = "SEMIOFED_TASK_NOTICE_FD"  # env: a pipe's write end; a byte on it tells the site worker a task is in


def task_notifier(fd: int | None) -> Callable[[], None]:
    """A function that writes one byte to the worker's pipe (never blocks; a full or closed pipe is ignored)."""
    if fd is None:
        return lambda: None
    os.set_blocking(fd, False)

    def notify() -> None:
        try:
            os.write(fd, b"\x01")
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # the worker has a byte waiting already, or is gone (then the SuperNode stops with it)

    return notify


def install(clock: PollClock, notify: Callable[[], None] = lambda: None) -> None:
    """Put `clock` in Flower's SuperNode loop; a pulled message or a pushed reply marks the site active, and a pulled
    message is announced to the site worker (`notify`), which then takes its task at once instead of polling."""
    from flwr.supernode import start_client_internal as loop

    check_flower(loop)
    pull, push = loop._pull_and_store_message, loop._push_messages  # noqa: SLF001 - the loop's own steps, wrapped

    def pull_and_mark(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:  # stored, with its task: the worker's AcquireTask finds it now
            clock.mark_active()
            notify()
        return run_id

    def push_and_mark(*args: Any, **kwargs: Any) -> Any:
        try:
            return push(*args, **kwargs)
        finally:
            clock.mark_active()

    # a message's objects are pulled as soon as the ServerApp has pushed them: Flower backs off 1 s (doubling to 10 s)
    # each time one is not there yet, so a small model's message took 4-5 s to arrive; back off from 0.05 s instead
    loop.pull_objects = functools.partial(loop.pull_objects, initial_backoff=PULL_BACKOFF_S, backoff_cap=PULL_BACKOFF_CAP_S)
    loop.time = clock
    loop._pull_and_store_message = pull_and_mark
    loop._push_messages = push_and_mark


def split_argv(argv: Sequence[str]) -> tuple[float, list[str]]:
    """(poll interval, Flower's own arguments) from this module's command line."""
    args, poll_s = list(argv), POLL_S
    if POLL_OPTION in args:
        at = args.index(POLL_OPTION)
        try:
            poll_s = float(args[at + 1])
        except (IndexError, ValueError):
            raise SystemExit(f"error: {POLL_OPTION} needs seconds, e.g. {POLL_OPTION} 0.25") from None
        del args[at:at + 2]
    return poll_s, args


def command(flower_args: Sequence[str], *, poll_s: float = POLL_S) -> list[str]:
    """The command line of a SuperNode with `flower-supernode`'s arguments and this poll interval."""
    return [sys.executable, "-m", __name__, POLL_OPTION, repr(float(poll_s)), *flower_args]


def main(argv: Sequence[str] | None = None) -> None:
    poll_s, flower_args = split_argv(sys.argv[1:] if argv is None else argv)
    try:
        clock = PollClock(poll_s=poll_s)
        fd = os.environ.pop(TASK_NOTICE_FD, None)
        install(clock, task_notifier(int(fd) if fd else None))
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
