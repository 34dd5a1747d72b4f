"""Part 3 of bench_federation.py: many small simulated sites for a few rounds; time per round, bytes, peak memory.

Peak memory: the largest sum, over one 0.5-s sample, of the RSS (and PSS,
which counts shared pages once) of the simulation process and all its
descendants (Ray's GCS, raylet, workers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from typing import Any

from federation_bytes import summarise_bytes
from federation_runs import (
    BENCH_DIR,
    CPUS,
    SECAGG_STAGES,
    done_rounds,
    latest_run,
    load_text,
    make_sites,
    run_child,
    run_summary,
    sim_config,
    with_load,
)


def scale_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """--scale-sites sites x 3 patients for --scale-rounds rounds, stopped at --scale-timeout: results["scale"]."""
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
    run = _last_run(config["checkpoints_dir"])
    sim.update(run_summary(run))
    results["scale"] = {"sites": n, "rounds": rounds, "secure_aggregation": args.scale_secagg, "patients_per_site": 3,
                        "folds": 3, "config": config, "sim": sim, "bytes": summarise_bytes(bytes_dir, _done(run))}
    print("scale", json.dumps(results["scale"]["sim"]), flush=True)


def _last_run(checkpoints_dir: str) -> dict[str, Any]:
    from semiofed.server.run_log import read_run

    run_dir = latest_run(checkpoints_dir)
    return read_run(run_dir) if run_dir else {"rounds": [], "started": None}


def _done(run: dict[str, Any]) -> set[str]:
    return {str(r["round"]) for r in done_rounds(run)}


def resummarise(results: dict[str, Any]) -> None:
    """Re-read the byte logs kept under BENCH_DIR/bytes (the scale run's complete rounds only)."""
    for tag, entry in results.get("bytes", {}).items():
        if (BENCH_DIR / "bytes" / tag).is_dir():
            entry.update(summarise_bytes(BENCH_DIR / "bytes" / tag))
    scale = results.get("scale")
    if scale and (BENCH_DIR / "bytes" / f"scale-{scale['sites']}").is_dir():
        done = _done(_last_run(scale["config"]["checkpoints_dir"]))
        scale["bytes"] = summarise_bytes(BENCH_DIR / "bytes" / f"scale-{scale['sites']}", done)


# --- report ----------------------------------------------------------------------------
def render_scale(sc: dict[str, Any]) -> list[str]:
    """The markdown of part 3."""
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
               f"| {sim['peak_pss_mib']:.0f} | {sim['peak_procs']} | {total:,.0f} ({share:,.0f}) | {load_text(sim)} |")
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
