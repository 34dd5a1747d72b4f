"""Progress bars for long steps: Rich when a terminal is attached, plain log lines otherwise."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PROGRESS_ENV = "SEMIOFED_PROGRESS"  # "rich", "plain" or "off"


def progress_mode() -> str:
    """Return the progress mode: $SEMIOFED_PROGRESS, else rich on a terminal and plain elsewhere."""
    mode = os.environ.get(PROGRESS_ENV, "").lower()
    if mode in {"rich", "plain", "off"}:
        return mode
    return "rich" if sys.stderr.isatty() else "plain"


class _PlainProgress:
    """A machine-readable stand-in for rich.progress.Progress: one line per task per ~5 s and at the end."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tasks: dict[int, dict] = {}

    def add_task(self, description: str, total: float | None = None, **_: object) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {"description": description, "total": total, "completed": 0.0, "last": 0.0}
        return task_id

    def update(self, task_id: int, *, advance: float = 0, completed: float | None = None,
               total: float | None = None, description: str | None = None, **_: object) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        task["completed"] = completed if completed is not None else task["completed"] + advance
        now = time.monotonic()
        done = task["total"] is not None and task["completed"] >= task["total"]
        if self.enabled and (done or now - task["last"] > 5.0):
            task["last"] = now
            total_text = f"/{task['total']:g}" if task["total"] is not None else ""
            print(f"progress: {task['description']} {task['completed']:g}{total_text}", file=sys.stderr, flush=True)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)


@contextmanager
def progress_bar(*, transient: bool = False) -> Iterator[Progress | _PlainProgress]:
    """Yield a progress object with add_task/update/advance, in the current mode."""
    mode = progress_mode()
    if mode != "rich":
        yield _PlainProgress(enabled=mode == "plain")
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    ) as progress:
        yield progress
