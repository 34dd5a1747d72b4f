"""A federated run's progress on the coordinator's disk (run.json): what `coordinator status` and the reports read."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from semiofed.common.files import make_private_dir, write_json_atomic

RUN_FILE = "run.json"
STATUS_RUNNING, STATUS_FINISHED, STATUS_FAILED = "running", "finished", "failed"


def _now() -> str:
    """UTC, to the millisecond (a round of a warm federation takes a few seconds)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class RunLog:
    """Rounds, per-site budget and metrics, and checkpoints of one run; rewritten atomically after each change."""

    def __init__(self, run_dir: Path, *, run_id: str, config: dict[str, Any]) -> None:
        self.run_dir = make_private_dir(Path(run_dir))
        self.path = self.run_dir / RUN_FILE
        self.data: dict[str, Any] = {"run_id": run_id, "status": STATUS_RUNNING, "started": _now(), "config": config,
                                     "rounds": [], "final_checkpoint": None}
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data, mode=0o644)

    def round(self, server_round: int) -> dict[str, Any]:
        """The entry of `server_round`, created on first use."""
        for entry in self.data["rounds"]:
            if entry["round"] == server_round:
                return entry
        entry = {"round": server_round, "started": _now(), "budget": {}, "declined": {}, "fit": {}, "failures": [],
                 "evaluate": {}, "aggregate": {}, "checkpoint": None, "skipped": None}
        self.data["rounds"].append(entry)
        return entry

    def update(self, server_round: int, **fields: Any) -> None:
        """Merge `fields` into the round's entry and save."""
        entry = self.round(server_round)
        for key, value in fields.items():
            if isinstance(entry.get(key), dict) and isinstance(value, dict):
                entry[key].update(value)
            elif isinstance(entry.get(key), list) and isinstance(value, list):
                entry[key].extend(value)
            else:
                entry[key] = value
        entry["updated"] = _now()
        self.save()

    def finish(self, status: str, **fields: Any) -> None:
        """Mark the run finished (or failed) and save."""
        self.data.update(status=status, finished=_now(), **fields)
        self.save()


def read_run(path: Path) -> dict[str, Any]:
    """A run.json (from a run directory or the file)."""
    path = Path(path)
    return json.loads((path / RUN_FILE if path.is_dir() else path).read_text(encoding="utf-8"))
