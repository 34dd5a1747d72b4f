"""One simulation, in a child process: `coordinator simulate`'s own simulate(), with Ray and the ServerApp's main timed apart.

The bench adds two things around the real simulate() of
server/federation/simulation.py: it starts Ray itself first (Flower's
RayBackend then skips ray.init), so Ray's start is timed apart; and it times
run_federation, the body of make_server_app's main. With a bytes_dir, a
ClientApp mod outside secaggplus_mod logs every message's size.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from federation_runs import CPUS, latest_run, run_summary

from semiofed.common.federation.run_config import FederationConfig


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


SECAGG_STAGE_METHODS = ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage")


def time_secagg_stages(workflow: type) -> dict[str, list[float]]:
    """Wrap the SecAgg+ workflow's stages so that each call's wall time (the coordinator's side: sending, waiting
    for the sites, and in unmask the secret reconstruction) is appended to the returned lists, per stage."""
    out: dict[str, list[float]] = {name: [] for name in SECAGG_STAGE_METHODS}
    for name in SECAGG_STAGE_METHODS:
        method = getattr(workflow, name)

        def timed(self: Any, *args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            t = time.monotonic()
            try:
                return _method(self, *args, **kwargs)
            finally:
                out[_name].append(time.monotonic() - t)

        setattr(workflow, name, timed)
    return out


def child_simulate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run simulate() on spec's sites and config; timings and the run.json summary."""
    started = time.monotonic()
    import flwr.client  # noqa: F401 - what simulate() imports when called, so that import_s holds every import
    import flwr.simulation  # noqa: F401
    import ray

    import semiofed.client.federation.client_app  # noqa: F401
    import semiofed.client.federation.egress  # noqa: F401
    from semiofed.common.errors import SemiofedError
    from semiofed.server.federation import server_app
    from semiofed.server.federation.simulation import simulate
    from semiofed.server.run_log import read_run

    imported = time.monotonic()
    config = FederationConfig(**spec["config"])
    # Ray started as Flower's RayBackend would, so its start is timed apart; the actors import this module's mod
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # as simulate() sets before Ray starts
    pythonpath = os.pathsep.join(sys.path)
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, num_cpus=CPUS, num_gpus=0, logging_level="ERROR",
             include_dashboard=False)
    ray_started = time.monotonic()
    marks: dict[str, float] = {}
    run_federation = server_app.run_federation

    def timed_run_federation(*args: Any, **kwargs: Any) -> Any:
        marks["main_start"] = time.monotonic()
        try:
            return run_federation(*args, **kwargs)
        finally:
            marks["main_end"] = time.monotonic()

    server_app.run_federation = timed_run_federation  # make_server_app's main looks it up when it runs
    stage_s = time_secagg_stages(server_app.DropoutTolerantSecAggPlus)
    counter = [make_byte_counter(spec["bytes_dir"])] if spec.get("bytes_dir") else []
    try:
        simulate(Path(spec["sites_dir"]), config, cpus=CPUS, mods=counter)
    except SemiofedError as exc:
        print(f"simulate: {exc}", flush=True)  # a failed run is a result too: run.json says what happened
    done = time.monotonic()
    run_dir = latest_run(config.checkpoints_dir)
    if run_dir is None:
        raise RuntimeError(f"the simulation left no run record under {config.checkpoints_dir}: see Flower's log above")
    if "main_start" not in marks:
        raise RuntimeError("the ServerApp's main ran without calling server_app.run_federation, so it was not timed: "
                           "make child_simulate wrap what make_server_app's main now calls")
    return {"import_s": imported - started, "ray_start_s": ray_started - imported,
            "to_main_s": marks["main_start"] - ray_started, "run_s": marks["main_end"] - marks["main_start"],
            "teardown_s": done - marks["main_end"], "total_s": done - started, "run_dir": str(run_dir),
            "secagg_stage_s": stage_s,
            **run_summary(read_run(run_dir))}
