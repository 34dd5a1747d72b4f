"""What every part of bench_federation.py shares: synthetic sites, run.json summaries, a process-tree sampler, child runs.

Every simulation (and the centralised baseline) runs in a fresh child
process, `bench_federation.py --child KIND SPEC`, so each gets its own Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

BENCH_DIR = Path(os.environ.get("SEMIOFED_BENCH_DIR", "/tmp/semiofed-bench")) / "federation"
RESULTS = BENCH_DIR / "results.json"
ENTRY = Path(__file__).resolve().with_name("bench_federation.py")  # runs the children (--child)
CPUS = 2  # Ray CPUs, as simulate() defaults to; each site's ClientApp takes 1, so 2 sites train at once
SIGMA = 1.0
# the small model and schedule of tests/test_federation_deploy.py
SMALL = dict(local_epochs=1, batch_patients=3, temporal="attn", hidden=8, embed_dim=8, n_segments=4, stcnn_dim=16,
             noise_multiplier=SIGMA, min_sites=2, round_timeout=300.0)
# for bytes only: FederationConfig's defaults (the DP-sized model the sites train), and a GESTURES-sized model (BLSTM 64
# over 1024-d I3D features and the keypoint stream) whose update dwarfs the per-message overhead
DEFAULT = dict(local_epochs=1, batch_patients=3, noise_multiplier=SIGMA, min_sites=2, round_timeout=300.0)
GESTURES = dict(DEFAULT, streams=("keypoints", "stcnn"), temporal="blstm", hidden=64, embed_dim=64, n_segments=16,
                descriptors=())
SECAGG_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


# --- sites and runs ----------------------------------------------------------------
def make_sites(root: Path, n_sites: int, *, n_patients: int, dim: int, n_snippets: int = 12) -> Path:
    """`n_sites` synthetic site directories under `root` (site i seeded with i), made afresh."""
    from dp_synthetic import populate

    from semiofed.client.site import init_site
    from semiofed.common.privacy.policy import PrivacyPolicy

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i in range(n_sites):
        # ample budget: the bench measures time and bytes, not privacy; sigma is fixed by the run config
        site = init_site(root / f"site-{i:03d}", f"site-{i:03d}", PrivacyPolicy(max_epsilon=1e4))
        # the STCNN features as `site prepare` makes them (a run that trains on them checks the records agree)
        populate(site.layout.records_dir, n_patients=n_patients, dim=dim, n_snippets=n_snippets, seed=i,
                 stcnn_input="patient-window")
    return root


def sim_config(name: str, rounds: int, secure: bool, **extra: Any) -> dict[str, Any]:
    """The small model's run config (FederationConfig keywords), its checkpoints in a fresh BENCH_DIR/checkpoints/`name`."""
    from semiofed.common.version import semiofed_version

    ckpt = BENCH_DIR / "checkpoints" / name
    shutil.rmtree(ckpt, ignore_errors=True)
    return {**SMALL, "rounds": rounds, "secure_aggregation": secure, "checkpoints_dir": str(ckpt),
            "semiofed_version": semiofed_version(), **extra}


def latest_run(checkpoints_dir: str | Path) -> Path | None:
    """The newest run-* folder under `checkpoints_dir`, or None."""
    runs = sorted(Path(checkpoints_dir).glob("run-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def fit_seconds(run: dict[str, Any]) -> list[float]:
    """Every site's fit "seconds" of every round of a run.json."""
    return [float(m["seconds"]) for r in run["rounds"] for m in r["fit"].values() if "seconds" in m]


def done_rounds(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The rounds of a run.json that finished: a global model written and, in the rounds the run evaluates, every
    site's evaluation answered (a result or a decline, e.g. too few test patients for the site's policy)."""
    from semiofed.common.federation.run_config import FederationConfig

    config = FederationConfig.from_run_config(run["config"]) if run.get("config") else None
    evaluated = lambda r: r.get("evaluate") or r.get("evaluation_declined")  # noqa: E731
    return [r for r in run["rounds"] if r.get("checkpoint") and (evaluated(r) or (config and not config.evaluates(r["round"])))]


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the report needs of a run.json; its timestamps have 1-s resolution.

    A round's entry starts once its budget queries (if any: each site is asked once per run) are answered, so the
    span from one round's start to the next one's is a whole round (fit, evaluate).
    """
    done = done_rounds(run)
    return {"status": run.get("status"), "error": run.get("error"), "fit_seconds": fit_seconds(run),
            "rounds_done": len(done), "sites_trained": [len(r["fit"]) for r in run["rounds"]],
            "round_spans_s": [span_s(a["started"], b["started"]) for a, b in zip(run["rounds"], run["rounds"][1:])],
            "serverapp_span_s": span_s(run["started"], run["finished"]) if run.get("finished") else None,
            "rounds_span_s": span_s(run["started"], done[-1]["updated"]) if done else None}


def span_s(start: str, end: str) -> float:
    """Seconds between two run.json timestamps."""
    import datetime as dt

    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731 - with or without milliseconds
    return (parse(end) - parse(start)).total_seconds()


def with_load(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`'s result with the 1-minute load average before and after (the machine is shared)."""
    before = os.getloadavg()[0]
    result = measure()
    return {**result, "load_1min": [round(before, 1), round(os.getloadavg()[0], 1)]}


def load_text(r: dict[str, Any]) -> str:
    """A result's 1-minute load before and after, for a table cell."""
    a, b = r.get("load_1min", (float("nan"), float("nan")))
    return f"{a:.1f} / {b:.1f}"


# --- memory and processes of a process tree -------------------------------------------
def process_tree(root: int) -> list[psutil.Process]:
    """`root` and all its descendants still running (empty when `root` is gone)."""
    try:
        process = psutil.Process(root)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class TreeSampler:
    """Samples a process tree every `interval` s: peak summed RSS/PSS, process count, and every flwr-clientapp seen."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0  # bytes, bytes, processes
        self.clientapps: dict[int, list[float]] = {}  # pid -> [first seen, last seen]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            processes = process_tree(self.root)
            now = time.monotonic()
            for process in processes:
                try:
                    memory = process.memory_full_info()  # smaps_rollup: PSS counts shared pages once
                    rss, pss = rss + memory.rss, pss + memory.pss
                    if any("flwr-clientapp" in arg for arg in process.cmdline()):
                        self.clientapps.setdefault(process.pid, [now, now])[1] = now
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass  # gone (or a zombie) since the tree was listed: it holds no memory
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(processes))
            self._stop.wait(self.interval)

    def memory(self) -> dict[str, Any]:
        """The peaks as the results store them."""
        return {"peak_rss_mib": self.peak_rss / 2**20, "peak_pss_mib": self.peak_pss / 2**20, "peak_procs": self.peak_procs}


def stop_processes(processes: list[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM, then after `grace` s SIGKILL, each of `processes` still running."""
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


# --- child processes ---------------------------------------------------------------
def run_child(kind: str, spec: dict[str, Any], *, timeout: float, sample: bool = False,
              allow_timeout: bool = False) -> dict[str, Any]:
    """Run one child process; with `sample`, its process tree's peak memory is added to the result.

    With `allow_timeout`, a child still running after `timeout` is stopped and {"timed_out": True} returned.
    """
    result_file = BENCH_DIR / f"child-{kind}.json"
    result_file.unlink(missing_ok=True)
    log_file = BENCH_DIR / f"child-{kind}.log"
    command = [sys.executable, str(ENTRY), "--child", kind, json.dumps({**spec, "result": str(result_file)})]
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sampler = TreeSampler(proc.pid) if sample else None
    try:
        if sampler:
            sampler.__enter__()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if not allow_timeout:
                raise
    finally:
        if sampler:
            sampler.__exit__()
        from semiofed.common.federation.processes import stop

        stop(proc.pid, timeout=10)  # the child's session: Ray's processes too, also after a timeout
    memory = sampler.memory() if sampler else {}
    if allow_timeout and not result_file.is_file():
        return {"timed_out": True, "timeout_s": timeout, **memory}
    if proc.returncode != 0 or not result_file.is_file():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"child {kind} failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    return {**json.loads(result_file.read_text()), "timed_out": False, **memory}
