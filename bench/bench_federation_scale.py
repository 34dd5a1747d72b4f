"""Federation at many simulated sites: seconds per round, peak memory, bytes per site, the coordinator's SecAgg+ stages.

Usage: python bench/bench_federation_scale.py [--sites 50 200 500] [--rounds 3] [--write]

Each site count runs bench_federation.py's scale part (federation_scale.scale_part): that many synthetic sites of
3 patients, the small model, SecAgg+ as the coordinator configures it (sparse share graph of 2*ceil(log2 n)+1
neighbours, quantisation levels below the modulus for n sites), min-sites n, Flower's simulation with 2 Ray actors
on the 2 cores, the byte-counting ClientApp mod on, and the coordinator's time in each SecAgg+ stage
(federation_sim.time_secagg_stages). The section `federation-scale` of docs/benchmarks.md is written with --write.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from federation_runs import BENCH_DIR, CPUS, SECAGG_STAGES, load_text  # noqa: E402
from federation_bytes import model_size  # noqa: E402
from federation_scale import scale_part  # noqa: E402
from report import write_section  # noqa: E402

SAVED = BENCH_DIR / "scale_sites.json"


def measure(sites: list[int], rounds: int, timeout: float) -> dict[str, Any]:
    results: dict[str, Any] = json.loads(SAVED.read_text()) if SAVED.is_file() else {}
    for n in sites:
        args = argparse.Namespace(scale_sites=n, scale_rounds=rounds, scale_secagg=True, scale_timeout=timeout)
        part: dict[str, Any] = {}
        scale_part(args, part)
        results[str(n)] = part["scale"]
        SAVED.write_text(json.dumps(results, indent=1, default=str))
    return results


def _shape(n: int) -> str:
    from semiofed.common.federation.run_config import FederationConfig
    from semiofed.server.federation.server_app import secagg_shape

    shape = secagg_shape(FederationConfig(min_sites=n), n)
    graph = "all" if shape["num_shares"] == 1.0 else f"{shape['num_shares']}"
    return f"{graph} / {shape['reconstruction_threshold']} / 2^{math.log2(shape['quantization_range']):.1f}"


def render(results: dict[str, Any], rounds: int) -> str:
    head = ("| sites | share graph / threshold / levels | status | rounds done | s per round | round s, steady (median) | "
            "coordinator's unmask s per round | peak RSS sum MiB | peak PSS sum MiB | sent per site per round B "
            "(share_keys) | sent / float32 model | load 1-min before / after |")
    lines = [head, "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for key in sorted(results, key=int):
        sc = results[key]
        sim, n = sc["sim"], int(key)
        model = model_size(sc["config"])
        k = sc["bytes"].get("per_site_round", {})
        sent = sum(v["sent_objects"] for v in k.values())
        update = sum(k[x]["sent_objects"] for x in SECAGG_STAGES if x in k)
        share = k.get("share_keys", {}).get("sent_objects", 0)
        done = sim.get("rounds_done", 0)
        per_round = sim["rounds_span_s"] / done if done and sim.get("rounds_span_s") else float("nan")
        spans = sorted(sim.get("round_spans_s") or [])
        median = spans[len(spans) // 2] if spans else float("nan")
        unmask = sim.get("secagg_stage_s", {}).get("unmask_stage", [])
        status = "stopped at the time limit" if sim.get("timed_out") else sim.get("status")
        lines.append(f"| {n} | {_shape(n)} | {status} | {done} of {sc['rounds']} | {per_round:.0f} | {median:.0f} | "
                     f"{(sum(unmask) / len(unmask)) if unmask else float('nan'):.2f} | {sim['peak_rss_mib']:.0f} | "
                     f"{sim['peak_pss_mib']:.0f} | {sent:,.0f} ({share:,.0f}) | {update / model['bytes']:.2f} | "
                     f"{load_text(sim)} |")
        if k:
            notes.append(f"{n} sites: " + ", ".join(f"{kind} {v['seconds']:.2f} s" for kind, v in k.items()))
    return "\n".join([
        f"`python bench/bench_federation_scale.py --sites {' '.join(sorted(results, key=int))} --rounds {rounds}`. "
        f"Flower's simulation engine, {CPUS} Ray actors of 1 CPU serving every virtual site in turn; each site 3 "
        f"synthetic patients in 3 folds (one DP step a round), the small model of bench_federation.py ({model['values']:,} "
        f"values, {model['bytes']:,} B as float32), "
        "SecAgg+ as the coordinator configures it for n sites: share graph (neighbours; 'all': complete) / Shamir "
        "threshold / quantisation levels (kept below the 2^32 modulus divided by n + 1, so the masked sum cannot "
        "wrap). Min-sites n. Each site's budget is asked once per run; the last round is evaluated. Peak memory: "
        "the largest sum over one 0.5-s sample of the RSS (PSS) of the simulation process and its descendants. "
        "Coordinator's unmask: the wall time of SecAgg+'s unmask stage at the coordinator (the sites' share "
        "messages and the secret reconstruction). Sent / model: the 4 SecAgg+ stages a site sends per round "
        "over the float32 model.", "", *lines, "",
        "ClientApp time per site per round (inside the byte-counting mod): " + "; ".join(notes) + ".",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a site count may run before it is stopped")
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    parser.add_argument("--from-saved", action="store_true", help="render the saved measurements again")
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    results = json.loads(SAVED.read_text()) if args.from_saved else measure(args.sites, args.rounds, args.timeout)
    body = render({k: v for k, v in results.items() if int(k) in args.sites} if not args.from_saved else results, args.rounds)
    print(body)
    if args.write:
        counts = sorted(results if args.from_saved else args.sites, key=int)
        title = f"Federation at {', '.join(map(str, counts[:-1]))}{' and ' if len(counts) > 1 else ''}{counts[-1]} simulated sites"
        print("written to", write_section("federation-scale", f"{title} (issue 16)", body))


if __name__ == "__main__":
    main()
