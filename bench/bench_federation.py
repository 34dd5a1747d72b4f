"""Cost of federation: time per round beyond local training, bytes per site per round (plain vs SecAgg+), 50 simulated sites.

Usage: python bench/bench_federation.py [--parts overhead,bytes,scale] [--scale-sites 50 --scale-rounds 5] [--write]

1. Overhead. One N-round run (3 sites x 10 synthetic patients, the small model
   of tests/test_federation_deploy.py) in (a) Flower's simulation engine and
   (b) a real deployment on 127.0.0.1 (SuperLink with TLS, site
   authentication, three SuperNodes), against centralised DP training on the
   union of the sites' training patients for the same number of epochs with
   the same TrainConfig and sigma. Process start (Ray; SuperLink and
   SuperNodes) is timed apart from the run. Per-round overhead =
   (run wall time - sum of the sites' fit "seconds" in run.json / P) / rounds,
   P = sites training at once (min(sites, Ray actors or CPU cores)).
2. Bytes. A ClientApp mod outside secaggplus_mod measures every reply a site
   sends (and every message it receives) as Flower 1.41 ships it: the sum of
   the deflated sizes of the message's unique inflatable objects (what the
   SuperNode pushes), and the size of the whole message as one protobuf.
3. Scale. Many small sites (3 patients, 3 folds) for a few rounds in the
   simulation engine; peak memory = the largest sum, over one sample, of the
   RSS (and PSS, which counts shared pages once) of the simulation process and
   all its descendants (Ray's GCS, raylet, workers), sampled every 0.5 s.

Every simulation runs in a fresh subprocess (its own Ray). The simulation is
simulate() of server/federation/simulation.py, rebuilt here so the bench can add its mod
and time the ServerApp's main apart from Ray's start. Work files and results:
/tmp/semiofed-bench/federation/ (SEMIOFED_BENCH_DIR).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from report import write_section  # noqa: E402

from semiofed.common.federation.run_config import FederationConfig  # noqa: E402

BENCH_DIR = Path(os.environ.get("SEMIOFED_BENCH_DIR", "/tmp/semiofed-bench")) / "federation"
RESULTS = BENCH_DIR / "results.json"
CPUS = 2  # Ray CPUs, as simulate() defaults to; each site's ClientApp takes 1, so 2 sites train at once
SIGMA = 1.0
# the small model and schedule of tests/test_federation_deploy.py
SMALL = dict(local_epochs=1, batch_patients=3, temporal="attn", hidden=8, embed_dim=8, n_segments=4, stcnn_dim=16,
             noise_multiplier=SIGMA, min_sites=2, round_timeout=300.0)
# the production shape (FederationConfig's defaults: BLSTM 64 over 1024-d I3D features), for bytes only
LARGE = dict(local_epochs=1, batch_patients=3, noise_multiplier=SIGMA, min_sites=2, round_timeout=300.0)
SECAGG_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")

log = logging.getLogger("bench_federation")


# --- sites ---------------------------------------------------------------------
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
        populate(site.layout.records_dir, n_patients=n_patients, dim=dim, n_snippets=n_snippets, seed=i)
    return root


def fit_seconds(run: dict[str, Any]) -> list[float]:
    """Every site's fit "seconds" of every round of a run.json."""
    return [float(m["seconds"]) for r in run["rounds"] for m in r["fit"].values() if "seconds" in m]


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the report needs of a run.json; its timestamps have 1-s resolution.

    A round's entry starts once its budget queries are answered, so the span from one round's start to the
    next one's is a whole round (fit, evaluate, the next budget query).
    """
    done = [r for r in run["rounds"] if r.get("checkpoint") and r.get("evaluate")]
    return {"status": run.get("status"), "error": run.get("error"), "fit_seconds": fit_seconds(run),
            "rounds_done": len(done), "sites_trained": [len(r["fit"]) for r in run["rounds"]],
            "round_spans_s": [_span(a["started"], b["started"]) for a, b in zip(run["rounds"], run["rounds"][1:])],
            "serverapp_span_s": _span(run["started"], run["finished"]) if run.get("finished") else None,
            "rounds_span_s": _span(run["started"], done[-1]["updated"]) if done else None}


def with_load(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`'s result with the 1-minute load average before and after (the machine is shared)."""
    before = os.getloadavg()[0]
    result = measure()
    return {**result, "load_1min": [round(before, 1), round(os.getloadavg()[0], 1)]}


# --- memory and processes of a process tree, from /proc ---------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(root: int) -> list[int]:
    children, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) if it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.endswith("kB")}
    return values.get("Rss", 0), values.get("Pss", 0)


class TreeSampler:
    """Samples a process tree every `interval` s: peak summed RSS/PSS, process count, and every flwr-clientapp seen."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0
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
            pids = _descendants(self.root)
            now = time.monotonic()
            for pid in pids:
                r, p = _memory_kib(pid)
                rss, pss = rss + r, pss + p
                try:
                    if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        self.clientapps.setdefault(pid, [now, now])[1] = now
                except OSError:
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop.wait(self.interval)


# --- children: one simulation, or centralised training, per fresh process --------
def make_byte_counter(out_dir: str) -> Callable[..., Any]:
    """A ClientApp mod (outermost) that appends each message's size, in and out, to out_dir/partition-<id>.jsonl."""

    def count_bytes(msg: Any, context: Any, call_next: Callable[..., Any]) -> Any:
        from flwr.common.serde import message_to_proto
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

        def sizes(message: Any) -> tuple[int, int]:
            objects = get_all_nested_objects(message)  # unique by content, as the SuperNode pushes them
            return sum(len(o.deflate()) for o in objects.values()), message_to_proto(message).ByteSize()

        configs = msg.content.config_records.get("secaggplus_configs") if msg.has_content() else None
        stage = str(configs["stage"]) if configs is not None and "stage" in configs else ""
        received = sizes(msg)  # before secaggplus_mod pops the stage from the content
        started = time.monotonic()
        reply = call_next(msg, context)
        seconds = time.monotonic() - started
        sent = sizes(reply)
        row = {"partition": int(context.node_config["partition-id"]), "type": msg.metadata.message_type,
               "round": msg.metadata.group_id, "stage": stage, "sent_objects": sent[0], "sent_proto": sent[1],
               "received_objects": received[0], "received_proto": received[1], "seconds": seconds}
        with open(Path(out_dir) / f"partition-{row['partition']}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return reply

    return count_bytes


def _child_simulate(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    import ray
    from flwr.client import ClientApp
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    from semiofed.client.federation.egress import make_egress_mod
    from semiofed.server.run_log import read_run
    from semiofed.server.federation.server_app import run_federation
    from semiofed.server.federation.simulation import VirtualSite, find_sites

    imported = time.monotonic()
    config = FederationConfig(**spec["config"])
    sites = find_sites(Path(spec["sites_dir"]))
    # Ray started as Flower's RayBackend would (it skips ray.init when Ray runs), so its start is timed apart
    pythonpath = os.pathsep.join(sys.path)
    os.environ["PYTHONPATH"] = pythonpath
    init_args = {"num_cpus": CPUS, "num_gpus": 0, "logging_level": "ERROR", "include_dashboard": False}
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
    ray_started = time.monotonic()
    marks: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Any) -> None:
        marks["main_start"] = time.monotonic()
        try:
            marks["final"] = str(run_federation(grid, context, config))
        finally:
            marks["main_end"] = time.monotonic()

    virtual = VirtualSite(sites, config)
    counter = [make_byte_counter(spec["bytes_dir"])] if spec.get("bytes_dir") else []
    from semiofed.client.federation.client_app import secure_aggregation_mod as secagg

    client_app = ClientApp(client_fn=virtual.client_fn, mods=[*counter, secagg, make_egress_mod(virtual.egress_spec)])
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(sites),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args})
    done = time.monotonic()
    runs = sorted(Path(config.checkpoints_dir).glob("run-*"), key=lambda p: p.stat().st_mtime)
    run = read_run(runs[-1])
    return {"import_s": imported - started, "ray_start_s": ray_started - imported,
            "to_main_s": marks.get("main_start", done) - ray_started,
            "run_s": marks.get("main_end", done) - marks.get("main_start", done),
            "teardown_s": done - marks.get("main_end", done), "total_s": done - started, "run_dir": str(runs[-1]),
            **run_summary(run)}


def _child_central(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    import torch

    torch.set_num_threads(1)  # as the simulation's Ray actors (Ray sets OMP_NUM_THREADS=1 for a 1-CPU actor)
    from semiofed.client.training.federated_round import SiteSettings, SiteTask, classifier_config
    from semiofed.common.learning.classifier import build_classifier
    from semiofed.common.learning.trainer import TrainConfig, Trainer
    from semiofed.server.federation.simulation import find_sites

    imported = time.monotonic()
    config = FederationConfig(**spec["config"])
    tasks = [SiteTask(SiteSettings(site_dir=s), config) for s in find_sites(Path(spec["sites_dir"]))]
    patients = [p for task in tasks for p in task.train]  # the very training patients of the federated run
    loaded = time.monotonic()
    train_config = TrainConfig(**{**tasks[0].train_config.to_dict(), "epochs": config.rounds * config.local_epochs,
                                  "noise_multiplier": config.noise_multiplier})
    model = build_classifier(classifier_config(config), seed=config.seed)
    trainer = Trainer(model, train_config, n_segments=config.n_segments)
    t0 = time.monotonic()
    steps = trainer.fit(patients)
    trained = time.monotonic()
    trainer.close()
    # What a site's fit "seconds" holds beyond DP-SGD: one site's round, in this warm process, against its steps alone
    from semiofed.client.training.federated_round import get_weights

    from semiofed.common.privacy import accountant as privacy

    calls = {"n": 0, "s": 0.0}
    epsilon_of = privacy._epsilon_of

    def counted(*a: Any, **k: Any) -> float:
        t = time.monotonic()
        try:
            return epsilon_of(*a, **k)
        finally:
            calls["n"] += 1
            calls["s"] += time.monotonic() - t

    from semiofed.common.privacy import release as privacy_ledger

    privacy._epsilon_of = privacy_ledger._epsilon_of = counted
    task = tasks[0]
    weights = get_weights(build_classifier(classifier_config(config), seed=config.seed))
    t = time.monotonic()
    task.budget_status("bench-central")
    query = {"s": time.monotonic() - t, "epsilon_calls": calls["n"], "epsilon_s": calls["s"]}
    site_fit = []
    for r in (1, 2):
        calls.update(n=0, s=0.0)
        site_fit.append({"s": task.fit(weights, run_id="bench-central", round=r)[2]["seconds"],
                         "epsilon_calls": calls["n"], "epsilon_s": calls["s"]})
    privacy._epsilon_of = privacy_ledger._epsilon_of = epsilon_of
    site_config = TrainConfig(**{**task.train_config.to_dict(), "noise_multiplier": config.noise_multiplier})
    t = time.monotonic()
    site_trainer = Trainer(build_classifier(classifier_config(config), seed=config.seed), site_config, n_segments=config.n_segments)
    site_trainer.fit(task.train, steps=task.steps_per_round)
    site_steps_s = time.monotonic() - t
    site_trainer.close()
    return {"import_s": imported - started, "load_s": loaded - imported, "train_s": trained - t0, "steps": steps,
            "patients": len(patients), "sample_rate": train_config.sample_rate(len(patients)),
            "threads": torch.get_num_threads(), "site_query": query, "site_fit": site_fit, "site_steps_s": site_steps_s,
            "site_steps": task.steps_per_round}


def run_child(kind: str, spec: dict[str, Any], *, timeout: float, sample: bool = False,
              allow_timeout: bool = False) -> dict[str, Any]:
    """Run one child process; with `sample`, its process tree's peak memory is added to the result.

    With `allow_timeout`, a child still running after `timeout` is stopped and {"timed_out": True} returned.
    """
    result_file = BENCH_DIR / f"child-{kind}.json"
    result_file.unlink(missing_ok=True)
    log_file = BENCH_DIR / f"child-{kind}.log"
    command = [sys.executable, __file__, "--child", kind, json.dumps({**spec, "result": str(result_file)})]
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
    memory = {"peak_rss_mib": sampler.peak_rss / 1024, "peak_pss_mib": sampler.peak_pss / 1024,
              "peak_procs": sampler.peak_procs} if sampler else {}
    if allow_timeout and not result_file.is_file():
        return {"timed_out": True, "timeout_s": timeout, **memory}
    if proc.returncode != 0 or not result_file.is_file():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"child {kind} failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    return {**json.loads(result_file.read_text()), "timed_out": False, **memory}


# --- 1. overhead ---------------------------------------------------------------------
def sim_config(name: str, rounds: int, secure: bool, **extra: Any) -> dict[str, Any]:
    from semiofed.common.version import semiofed_version

    ckpt = BENCH_DIR / "checkpoints" / name
    shutil.rmtree(ckpt, ignore_errors=True)
    return {**SMALL, "rounds": rounds, "secure_aggregation": secure, "checkpoints_dir": str(ckpt),
            "semiofed_version": semiofed_version(), **extra}


def deployment_run(sites_dir: Path, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Coordinator + SuperLink (TLS, site auth) + one SuperNode per site on 127.0.0.1; one run; everything stopped after."""
    from semiofed.client.federation import supernode
    from semiofed.common.federation.processes import free_port
    from semiofed.server.coordinator import Coordinator
    from semiofed.server.federation.simulation import find_sites

    secure = bool(config.get("secure_aggregation", True))
    root = BENCH_DIR / "deployment"
    shutil.rmtree(root, ignore_errors=True)
    coordinator = Coordinator(root / "coordinator")
    coordinator.init(port=free_port())
    sites = find_sites(sites_dir)
    from semiofed.client.site import open_site

    for site_dir in sites:
        site = open_site(site_dir)
        coordinator.enroll(site.layout.public_key, name=site.site_id)
    joined: list[Path] = []
    out: dict[str, Any] = {}
    try:
        t = time.monotonic()
        coordinator.start()
        out["superlink_start_s"] = time.monotonic() - t  # until it listens, plus `flwr supernode register` per site
        t = time.monotonic()
        address = f"127.0.0.1:{coordinator.state().port}"
        for site_dir in sites:
            supernode.join(site_dir, superlink=address, ca=coordinator.tls.ca_certificate, clientapp_port=free_port(),
                           background=True)
            joined.append(site_dir)
        online = _wait_online(coordinator, len(sites), timeout=120)
        out["supernodes_online_s"] = time.monotonic() - t  # until `flwr supernode list` shows them all online
        out["supernodes_online"] = online
        run_config = FederationConfig(**{k: v for k, v in config.items() if k not in ("checkpoints_dir", "semiofed_version")})
        with TreeSampler(os.getpid(), interval=0.2) as sampler:
            t = time.monotonic()
            run = coordinator.run(run_config, timeout=timeout)
            out["run_s"] = time.monotonic() - t
        out["clientapp_processes"] = len(sampler.clientapps)
        lifetimes = sorted(b - a for a, b in sampler.clientapps.values())
        out["clientapp_seen_s_median"] = lifetimes[len(lifetimes) // 2] if lifetimes else None
        out.update(run_summary(run))
    finally:
        # every process this run started, before stopping the leaders: SuperExecs outlive them, reparented to init
        started_here = [p for p in _descendants(os.getpid()) if p != os.getpid()]
        for site_dir in joined:
            supernode.leave(site_dir)
        coordinator.stop()
        _kill_all(started_here)
    return out


def _kill_all(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then after `grace` s SIGKILL, each of `pids` still running."""
    import signal

    from semiofed.common.federation.processes import is_running

    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if is_running(p)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if is_running(p)]
            time.sleep(0.2)


def _wait_online(coordinator: Any, n: int, *, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    online = 0
    while time.monotonic() < deadline:
        result = coordinator._flwr(["supernode", "list", "semiofed", "--format", "json"])
        try:
            nodes = json.loads(result.stdout[result.stdout.index("{"):]).get("nodes", [])
        except ValueError:
            nodes = []
        online = sum(1 for node in nodes if str(node.get("status", "")).lower() == "online")
        if online >= n:
            return online
        time.sleep(0.5)
    return online


def _span(start: str, end: str) -> float:
    import datetime as dt

    parse = lambda s: dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def cold_imports() -> dict[str, float]:
    """Seconds a fresh Python takes to import what a flwr-clientapp needs: the app module, and torch for train/evaluate."""
    out = {}
    for name, code in (("python", "pass"), ("client_app", "import semiofed.client.federation.client_app"),
                       ("client_app + torch training", "import semiofed.client.federation.client_app, semiofed.client.training.federated_round")):
        times = []
        for _ in range(3):
            t = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.monotonic() - t)
        out[name] = sorted(times)[1]
    return out


def overhead_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    sites_dir = make_sites(BENCH_DIR / "sites-3x10", 3, n_patients=10, dim=16)
    rounds, timeout = args.rounds, 900
    part: dict[str, Any] = {"rounds": rounds, "sites": 3, "patients_per_site": 10, "config": sim_config("central", rounds, True)}
    part["central"] = with_load(lambda: run_child("central", {"sites_dir": str(sites_dir), "config": sim_config("central", rounds, True)},
                                                  timeout=timeout))
    print("central", part["central"], flush=True)
    for secure in (False, True):
        tag = "secagg" if secure else "plain"
        make_sites(sites_dir, 3, n_patients=10, dim=16)  # fresh ledgers and accountants: every run starts alike
        part[f"sim_{tag}"] = with_load(lambda: run_child(
            "sim", {"sites_dir": str(sites_dir), "config": sim_config(f"sim-{tag}", rounds, secure)}, timeout=timeout, sample=True))
        print(f"sim {tag}", part[f"sim_{tag}"], flush=True)
        make_sites(sites_dir, 3, n_patients=10, dim=16)
        part[f"deploy_{tag}"] = with_load(lambda: deployment_run(sites_dir, sim_config(f"deploy-{tag}", rounds, secure), timeout=timeout))
        print(f"deployment {tag}", part[f"deploy_{tag}"], flush=True)
    part["cold_imports"] = cold_imports()
    print("cold imports", part["cold_imports"], flush=True)
    results["overhead"] = part


# --- 2. bytes ------------------------------------------------------------------------
def model_size(config: dict[str, Any]) -> dict[str, int]:
    from semiofed.client.training.federated_round import classifier_config, get_weights
    from semiofed.common.learning.classifier import build_classifier

    weights = get_weights(build_classifier(classifier_config(FederationConfig(**config))))
    return {"arrays": len(weights), "values": int(sum(w.size for w in weights)), "bytes": int(sum(w.nbytes for w in weights))}


def summarise_bytes(bytes_dir: Path, rounds: set[str] | None = None) -> dict[str, Any]:
    """Mean bytes per site per round, by message kind (SecAgg+ stages apart), sent and received; only `rounds` if given."""
    rows = [json.loads(line) for f in sorted(bytes_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]
    rows = [r for r in rows if rounds is None or r["round"] in rounds]
    sites = {r["partition"] for r in rows}
    rounds = {r["round"] for r in rows}
    keys = ("messages", "sent_objects", "sent_proto", "received_objects", "received_proto", "seconds")
    kinds: dict[str, dict[str, float]] = {}
    for r in rows:
        k = kinds.setdefault(r["stage"] or r["type"], dict.fromkeys(keys, 0.0))
        k["messages"] += 1
        for key in keys[1:]:
            k[key] += r.get(key, 0.0)  # seconds: the ClientApp's time on the message, inside the byte counter
    per = len(sites) * len(rounds)
    for k in kinds.values():
        for key in keys:
            k[key] /= per
    return {"sites": len(sites), "rounds": len(rounds), "per_site_round": kinds}


def bytes_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    part: dict[str, Any] = {}
    for shape, extra, dim, rounds in (("small", SMALL, 16, 2), ("production", LARGE, 1024, 1)):
        sites_dir = make_sites(BENCH_DIR / f"sites-bytes-{shape}", 3, n_patients=10, dim=dim)
        for secure in (False, True):
            make_sites(sites_dir, 3, n_patients=10, dim=dim)
            tag = f"{shape}_{'secagg' if secure else 'plain'}"
            bytes_dir = BENCH_DIR / "bytes" / tag
            shutil.rmtree(bytes_dir, ignore_errors=True)
            bytes_dir.mkdir(parents=True)
            config = {**sim_config(f"bytes-{tag}", rounds, secure), **{k: v for k, v in extra.items()}}
            if shape == "production":
                for key in ("temporal", "hidden", "embed_dim", "n_segments", "stcnn_dim"):
                    config.pop(key, None)  # FederationConfig's defaults
            sim = with_load(lambda: run_child("sim", {"sites_dir": str(sites_dir), "config": config, "bytes_dir": str(bytes_dir)},
                                              timeout=900))
            if sim["status"] != "finished":
                raise RuntimeError(f"bytes run {tag} did not finish: {sim.get('error')}")
            part[tag] = {"model": model_size(config), "load_1min": sim["load_1min"], **summarise_bytes(bytes_dir)}
            print(tag, json.dumps(part[tag]), flush=True)
    results["bytes"] = part


# --- 3. scale ------------------------------------------------------------------------
def scale_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from semiofed.server.run_log import read_run

    n, rounds = args.scale_sites, args.scale_rounds
    sites_dir = make_sites(BENCH_DIR / f"sites-{n}x3", n, n_patients=3, dim=16)
    config = sim_config(f"scale-{n}", rounds, args.scale_secagg, folds=3, min_sites=n, round_timeout=1800.0)
    bytes_dir = BENCH_DIR / "bytes" / f"scale-{n}"
    shutil.rmtree(bytes_dir, ignore_errors=True)
    bytes_dir.mkdir(parents=True)
    t = time.monotonic()
    sim = with_load(lambda: run_child("sim", {"sites_dir": str(sites_dir), "config": config, "bytes_dir": str(bytes_dir)},
                                      timeout=args.scale_timeout, sample=True, allow_timeout=True))
    sim["wall_s"] = time.monotonic() - t
    # the rounds that finished, from run.json (also when the run was stopped at the time limit)
    runs = sorted(Path(config["checkpoints_dir"]).glob("run-*"), key=lambda p: p.stat().st_mtime)
    run = read_run(runs[-1]) if runs else {"rounds": [], "started": None}
    sim.update(run_summary(run))
    done = {str(r["round"]) for r in run["rounds"] if r.get("checkpoint") and r.get("evaluate")}
    results["scale"] = {"sites": n, "rounds": rounds, "secure_aggregation": args.scale_secagg, "patients_per_site": 3,
                        "folds": 3, "config": config, "sim": sim, "bytes": summarise_bytes(bytes_dir, done)}
    print("scale", json.dumps(results["scale"]["sim"]), flush=True)


# --- report ----------------------------------------------------------------------------
def resummarise(results: dict[str, Any]) -> None:
    """Re-read the byte logs kept under BENCH_DIR/bytes (the scale run's complete rounds only)."""
    from semiofed.server.run_log import read_run

    for tag, entry in results.get("bytes", {}).items():
        if (BENCH_DIR / "bytes" / tag).is_dir():
            entry.update(summarise_bytes(BENCH_DIR / "bytes" / tag))
    scale = results.get("scale")
    if scale and (BENCH_DIR / "bytes" / f"scale-{scale['sites']}").is_dir():
        runs = sorted(Path(scale["config"]["checkpoints_dir"]).glob("run-*"), key=lambda p: p.stat().st_mtime)
        run = read_run(runs[-1]) if runs else {"rounds": []}
        done = {str(r["round"]) for r in run["rounds"] if r.get("checkpoint") and r.get("evaluate")}
        scale["bytes"] = summarise_bytes(BENCH_DIR / "bytes" / f"scale-{scale['sites']}", done)


def local_seconds(r: dict[str, Any], parallel: int) -> float:
    """The sites' fit seconds, summed over sites and rounds, over the parallelism P."""
    return sum(r["fit_seconds"]) / parallel


def overhead_per_round(r: dict[str, Any], parallel: int, rounds: int) -> float:
    """(run wall time - summed fit seconds / P) / rounds."""
    return (r["run_s"] - local_seconds(r, parallel)) / rounds


def steady_round(r: dict[str, Any], parallel: int, rounds: int) -> tuple[float, float]:
    """(median span between round starts in run.json, that minus one round's fit seconds / P); NaN if < 2 rounds."""
    spans = sorted(r.get("round_spans_s") or [])
    if not spans:
        return float("nan"), float("nan")
    median = spans[len(spans) // 2] if len(spans) % 2 else (spans[len(spans) // 2 - 1] + spans[len(spans) // 2]) / 2
    return median, median - local_seconds(r, parallel) / rounds


def _load(r: dict[str, Any]) -> str:
    a, b = r.get("load_1min", (float("nan"), float("nan")))
    return f"{a:.1f} / {b:.1f}"


def render_overhead(o: dict[str, Any], bytes_: dict[str, Any] | None = None) -> list[str]:
    c, rounds = o["central"], o["rounds"]
    out = [f"### 1. Overhead of federation: {o['sites']} sites x {o['patients_per_site']} synthetic patients, {rounds} rounds", "",
           f"Model: temporal attention, hidden 8, embed 8, 4 segments, 16-d STCNN features (+ keypoint features); "
           f"1 local epoch per round, 3 patients per step expected, DP-SGD sigma {SIGMA:g}, lr 1e-3, 5 folds "
           f"(6 training patients per site, 2 steps per round). Centralised: the same TrainConfig and sigma on the "
           f"union of the {c['patients']} training patients for {rounds} epochs ({c['steps']} DP steps, "
           f"q={c['sample_rate']:.3f}), 1 torch thread like the simulation's Ray actors; the federated run takes "
           f"the same {c['steps']} steps in all (3 sites x {rounds} rounds x 2).", "",
           "| | process start s | run s | sites' fit s, sum | local training s (sum / P) | **overhead per round s** "
           "| round s, steady (median) | overhead per round s, steady | load 1-min before / after |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
           f"| centralised DP-SGD, same patients, epochs, sigma | {c['import_s']:.1f} (imports) + {c['load_s']:.1f} (records) "
           f"| {c['train_s']:.2f} | - | {c['train_s']:.2f} | - | {c['train_s'] / rounds:.2f} (per epoch) | - | {_load(c)} |"]
    rows = (("sim_plain", "simulation, FedAvg (no SecAgg+)*", CPUS), ("sim_secagg", "simulation, SecAgg+", CPUS),
            ("deploy_plain", "deployment, TLS on loopback, FedAvg*", 2), ("deploy_secagg", "deployment, TLS on loopback, SecAgg+", 2))
    verdict = {}
    for tag, label, parallel in rows:
        r = o.get(tag)
        if not r:
            continue
        over = overhead_per_round(r, parallel, rounds)
        span, steady = steady_round(r, parallel, rounds)
        verdict[tag] = over
        start = (f"Ray {r['ray_start_s']:.1f}" if tag.startswith("sim")
                 else f"SuperLink {r['superlink_start_s']:.1f} + SuperNodes online {r['supernodes_online_s']:.1f}")
        status = "" if r["status"] == "finished" else f" ({r['status']}: {r.get('error')})"
        out.append(f"| {label}{status} | {start} | {r['run_s']:.1f} | {sum(r['fit_seconds']):.1f} | {local_seconds(r, parallel):.1f} "
                   f"| **{over:.1f}** | {span:.0f} | {steady:.1f} | {_load(r)} |")
    met = lambda prefix: all(v < 2.0 for k, v in verdict.items() if k.startswith(prefix))  # noqa: E731
    steady = {tag: steady_round(o[tag], p, rounds)[1] for tag, _, p in rows if tag in o}
    out += ["", "Run s: simulation, the ServerApp's main from start to end (Ray already up, so the actors' first imports "
            "are inside); deployment, `Coordinator.run` from `flwr run` until run.json is final (FAB, the ServerApp's "
            "process start and imports, every round, the end of `--stream`). **Overhead per round = (run s - sum of "
            "the sites' fit `seconds` in run.json / P) / rounds**, P = sites training at once = 2 (simulation: 2 Ray "
            "actors of 1 CPU each; deployment: 3 SuperNodes on 2 cores). Steady: the median span between consecutive "
            "round starts in run.json (1-s resolution; a round's entry starts when its budget queries are answered), "
            "minus one round's fit seconds / P; it leaves out the run's start and end. A site's fit `seconds` run "
            "from the start to the end of SiteTask.fit (noise choice, budget check, DP-SGD, ledger entry), so record "
            "loading, the budget query and evaluation count as overhead. Process start is not in run s. "
            "*FedAvg rows were measured with a bench-side ClientApp that skipped secaggplus_mod for plain train "
            "messages; the installed app now does the same (client_app.secure_aggregation_mod).", "",
            f"**Target < 2 s per round beyond local training: simulation {'met' if met('sim') else 'not met'} "
            f"({min(v for k, v in verdict.items() if k.startswith('sim')):.1f}-{max(v for k, v in verdict.items() if k.startswith('sim')):.1f} s; "
            f"steady {min(v for k, v in steady.items() if k.startswith('sim')):.1f}-{max(v for k, v in steady.items() if k.startswith('sim')):.1f} s), "
            f"deployment {'met' if met('deploy') else 'not met'} "
            f"({min(v for k, v in verdict.items() if k.startswith('deploy')):.0f}-{max(v for k, v in verdict.items() if k.startswith('deploy')):.0f} s; "
            f"steady {min(v for k, v in steady.items() if k.startswith('deploy')):.0f}-{max(v for k, v in steady.items() if k.startswith('deploy')):.0f} s).** "
            f"The machine was shared with other jobs throughout (1-minute load 6-13 on 2 cores, last column), which "
            f"inflates every figure here, the accounting most; the two simulation rows differ mostly by that load, "
            f"not by SecAgg+."]
    q, fits = c.get("site_query"), c.get("site_fit")
    if q and fits:
        rounds_text = " and ".join(f"{f['s']:.2f} s in round {i + 1} ({f['epsilon_s']:.2f} s in {f['epsilon_calls']} epsilon "
                                   f"computations)" for i, f in enumerate(fits))
        out += ["", f"What a site's round costs, in one warm process (site-000, 6 training patients): its 2 DP-SGD steps "
                f"{c['site_steps_s']:.3f} s; the whole SiteTask.fit {rounds_text}: common/privacy._epsilon_of, Opacus' "
                f"PRV accountant, whose RDP-based domain bound in pure Python dominates and is recomputed over the "
                f"site's whole history at every call, so it grows round after round. The budget query costs "
                f"{q['s']:.2f} s, {q['epsilon_calls']} more epsilon computations ({q['epsilon_s']:.2f} s). So \"local "
                f"training\" as the sites report it is almost all privacy accounting, and the query's accounting counts "
                f"as overhead in the table; computing epsilon once per change of the history (cached per history and "
                f"delta) would remove most of both."]
    timing = {tag: (bytes_ or {}).get(tag, {}).get("per_site_round", {}) for tag in ("small_plain", "small_secagg")}
    if all(any("seconds" in v for v in k.values()) for k in timing.values() if k) and any(timing.values()):
        parts = []
        for tag, k in timing.items():
            if k:
                fit = k.get("train", k.get("collect_masked_vectors", {})).get("seconds", 0)
                parts.append(f"{'SecAgg+' if 'secagg' in tag else 'FedAvg'}: budget query "
                             f"{k.get('get_properties', {}).get('seconds', 0):.1f} s, train {fit:.1f} s, evaluate "
                             f"{k.get('evaluate', {}).get('seconds', 0):.1f} s")
        out += ["", "What dominates in the simulation: the ClientApp's time per site per round (part 2's runs, same "
                "model and sites; the byte-counting mod times the rest of the app) is " + "; ".join(parts) + ". Each "
                "message builds the SiteTask again (reads the site's records) and the query and train messages run the "
                "accountant, so the budget query costs about as much as the round's training; the SecAgg+ key stages "
                "take milliseconds. Evaluation is cheap."]
    d, dp, imp = o.get("deploy_secagg", {}), o.get("deploy_plain", {}), o.get("cold_imports", {})
    if d:
        out += ["", f"What dominates in the deployment: every message to a site (budget query, train or each of the 4 "
                f"SecAgg+ stages, evaluate: 3 or 6 per site per round) runs in a new `flwr-clientapp` process: "
                f"{d.get('clientapp_processes')} were seen in the SecAgg+ run ({dp.get('clientapp_processes', '?')} with FedAvg), "
                f"each alive for about {d.get('clientapp_seen_s_median') or 0:.1f} s (median; sampled every 0.2 s). "
                f"A fresh Python here takes {imp.get('python', 0):.2f} s, importing the ClientApp module "
                f"{imp.get('client_app', 0):.2f} s, with torch and the training code {imp.get('client_app + torch training', 0):.2f} s "
                f"(median of 3; the SecAgg+ key stages do not import torch, the query, fit and evaluate do). On top, an "
                f"idle SuperNode polls the SuperLink every 3 s (Flower 1.41, supernode/start_client_internal.py), so a "
                f"message waits 0-3 s to be pulled, and the SuperNode's SuperExec looks for new ClientApp tasks every "
                f"1 s. The ServerApp's span in run.json: {d.get('serverapp_span_s') or 0:.0f} s of the {d.get('run_s', 0):.0f} s "
                f"run; the rest is `flwr run`, the ServerApp process start and the stream's end."]
    sim = o.get("sim_secagg", {})
    if sim:
        out += ["", f"Simulation: Ray starts in {sim['ray_start_s']:.1f} s (plus {sim['import_s']:.1f} s of imports in the "
                f"driver); its 2 actors stay up between messages, so no process starts per message; the first message "
                f"to each actor imports torch and the site code. Teardown {sim['teardown_s']:.1f} s. Peak memory of the "
                f"simulation's process tree: {sim['peak_rss_mib']:.0f} MiB RSS summed ({sim['peak_pss_mib']:.0f} MiB PSS), "
                f"{sim['peak_procs']} processes."]
    return out


def render_bytes(b: dict[str, Any]) -> list[str]:
    out = ["### 2. Bytes per site per round", "",
           "Measured in the simulation engine (3 sites x 10 patients) by a ClientApp mod outside secaggplus_mod: each "
           "message's unique inflatable objects, deflated, i.e. what a SuperNode pulls from and pushes to the SuperLink "
           "in Flower 1.41, before HTTP/2, TLS and TCP framing. Mean per site per round. Model bytes: the float32 "
           "state_dict. Small: the model of part 1 (2 rounds); production: FederationConfig's defaults (BLSTM "
           "hidden 64, embed 64, 16 segments, 1024-d I3D features + keypoints; 1 round).", "",
           "| model | model B | mode | budget query B | train B | evaluate B | **sent B** | sent / model | received B |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    expansion = []
    for shape in ("small", "production"):
        train_sent = {}
        for mode in ("plain", "secagg"):
            e = b.get(f"{shape}_{mode}")
            if not e:
                continue
            k, model = e["per_site_round"], e["model"]["bytes"]
            if mode == "secagg":
                train_sent[mode] = sum(k[x]["sent_objects"] for x in SECAGG_STAGES if x in k)
                label = "SecAgg+: " + ", ".join(f"{x} {k[x]['sent_objects']:,.0f}" for x in SECAGG_STAGES if x in k)
            else:
                train_sent[mode] = k.get("train", {}).get("sent_objects", 0.0)
                label = "FedAvg"
            total = sum(v["sent_objects"] for v in k.values())
            received = sum(v["received_objects"] for v in k.values())
            out.append(f"| {shape} ({e['model']['values']:,} values) | {model:,} | {label} | "
                       f"{k.get('get_properties', {}).get('sent_objects', 0):,.0f} | {train_sent[mode]:,.0f} | "
                       f"{k.get('evaluate', {}).get('sent_objects', 0):,.0f} | **{total:,.0f}** | {total / model:.2f} | {received:,.0f} |")
        if len(train_sent) == 2:
            plain_total = sum(v["sent_objects"] for v in b[f"{shape}_plain"]["per_site_round"].values())
            secagg_total = sum(v["sent_objects"] for v in b[f"{shape}_secagg"]["per_site_round"].values())
            expansion.append(f"{shape} model: **{train_sent['secagg'] / train_sent['plain']:.2f}x** for the update "
                             f"({train_sent['secagg']:,.0f} B over 4 stages vs {train_sent['plain']:,.0f} B), "
                             f"{secagg_total / plain_total:.2f}x for all a site sends in a round")
    out += ["", "SecAgg+ expansion with 3 sites: " + "; ".join(expansion) + ". The masked update is the model quantised "
            "to integers (2^22 levels) and sent as int64, 8 bytes a value where FedAvg sends 4, so the ratio tends to "
            "2x for a large model; the key stages (public keys, one encrypted share per peer) add a little that grows "
            "with the number of sites (part 3)."]
    timing = []
    for tag in ("small_plain", "small_secagg"):
        k = b.get(tag, {}).get("per_site_round", {})
        if any("seconds" in v for v in k.values()):
            timing.append(f"{'SecAgg+' if 'secagg' in tag else 'FedAvg'}: " + ", ".join(
                f"{kind} {v['seconds']:.2f}" for kind, v in k.items()))
    if timing:
        out += ["", "The ClientApp's own time per message (small model, simulation, mean s per site per round, "
                "measured around the rest of the app by the same mod): " + "; ".join(timing) + "."]
    received = []
    for shape in ("small", "production"):
        p, q = b.get(f"{shape}_plain"), b.get(f"{shape}_secagg")
        if p and q:
            ep = p["per_site_round"].get("evaluate", {}).get("received_objects", 0)
            eq = q["per_site_round"].get("evaluate", {}).get("received_objects", 0)
            received.append(f"{shape} {ep:,.0f} B with FedAvg, {eq:,.0f} B with SecAgg+ ({eq / max(ep, 1):.2f}x)")
    if received:
        out += ["", "Global model the server sends for evaluation (received per site per round): " + "; ".join(received) +
                ". After SecAgg+ the server's unmasked aggregate comes out of Flower's dequantisation as float64 and "
                "is sent on as such (evaluate, and the next round's fit), twice the float32 size."]
    return out


def render_scale(sc: dict[str, Any]) -> list[str]:
    sim = sc["sim"]
    k = sc["bytes"].get("per_site_round", {})
    total = sum(v["sent_objects"] for v in k.values())
    share = k.get("share_keys", {}).get("sent_objects", 0)
    done = sim.get("rounds_done", 0)
    per_round = (sim["rounds_span_s"] / done) if done and sim.get("rounds_span_s") else float("nan")
    out = [f"### 3. Scale: {sc['sites']} simulated sites x {sc['rounds']} rounds", "",
           f"Each site: 3 synthetic patients, 3 folds (1 training, 1 validation, 1 test patient; with batch 3 the "
           f"sampling rate is 1, one DP step a round); the small model; SecAgg+ "
           f"{'on, every site sharing its keys with all others' if sc['secure_aggregation'] else 'off'}; min-sites "
           f"{sc['sites']}; Ray with {CPUS} CPUs (2 actors of 1 CPU); the byte-counting mod on. Peak memory: the largest "
           f"sum over one 0.5-s sample of the RSS (PSS) of the simulation process and all its descendants.", "",
           "| status | rounds done | wall s | Ray start s | run s | s per round | round s, steady (median) | peak RSS sum MiB "
           "| peak PSS sum MiB | processes | sent per site per round B (share_keys) | load 1-min before / after |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    spans = sorted(sim.get("round_spans_s") or [])
    median = spans[len(spans) // 2] if spans else float("nan")
    status = "stopped at the time limit" if sim.get("timed_out") else sim.get("status")
    out.append(f"| {status} | {done} of {sc['rounds']} | {sim['wall_s']:.0f} | {sim.get('ray_start_s', float('nan')):.1f} "
               f"| {sim.get('run_s', float('nan')):.0f} | {per_round:.0f} | {median:.0f} | {sim['peak_rss_mib']:.0f} "
               f"| {sim['peak_pss_mib']:.0f} | {sim['peak_procs']} | {total:,.0f} ({share:,.0f}) | {_load(sim)} |")
    if k and any("seconds" in v for v in k.values()):
        update = sum(k[x]["sent_objects"] for x in SECAGG_STAGES if x in k)
        out += ["", f"Per site per round: the SecAgg+ update exchange (4 stages) is {update:,.0f} B at {sc['sites']} sites "
                f"(setup {k.get('setup', {}).get('sent_objects', 0):,.0f}, share_keys {share:,.0f}, collect_masked_vectors "
                f"{k.get('collect_masked_vectors', {}).get('sent_objects', 0):,.0f}, unmask "
                f"{k.get('unmask', {}).get('sent_objects', 0):,.0f}): share_keys grows with the number of peers. "
                f"ClientApp time per site per round: " + ", ".join(f"{kind} {v['seconds']:.2f} s" for kind, v in k.items()) +
                f"; {sc['sites']} sites on 2 actors make about {sum(v['seconds'] for v in k.values()) * sc['sites'] / CPUS:.0f} s "
                f"of the {per_round:.0f} s round. Memory stays flat with the number of sites: the 2 Ray actors serve "
                f"every virtual site in turn."]
    if sim.get("timed_out") and done:
        out += ["", f"Extrapolated (not measured): {sc['rounds']} rounds at {per_round:.0f} s each, about "
                f"{sc['rounds'] * per_round / 60:.0f} min of rounds plus Ray's start."]
    return out


def render(results: dict[str, Any]) -> str:
    out: list[str] = []
    if "overhead" in results:
        out += render_overhead(results["overhead"], results.get("bytes")) + [""]
    if "bytes" in results:
        out += render_bytes(results["bytes"]) + [""]
    if "scale" in results:
        out += render_scale(results["scale"])
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="overhead,bytes,scale", help="comma-separated: overhead, bytes, scale, report")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale-sites", type=int, default=50)
    parser.add_argument("--scale-rounds", type=int, default=5)
    parser.add_argument("--scale-secagg", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--scale-timeout", type=float, default=1200.0)
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    parser.add_argument("--child", nargs=2, default=None, metavar=("KIND", "SPEC"))
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        kind, spec = args.child[0], json.loads(args.child[1])
        result = {"sim": _child_simulate, "central": _child_central}[kind](spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if part == "report":
            resummarise(results)
            continue
        {"overhead": overhead_part, "bytes": bytes_part, "scale": scale_part}[part](args, results)
        RESULTS.write_text(json.dumps(results, indent=1))
    body = render(results)
    print(body)
    if args.write:
        print("written to", write_section("federation", "Federation: overhead per round, bytes per site, 50 sites", body))


if __name__ == "__main__":
    main()
