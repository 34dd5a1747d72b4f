"""Cost of federation: time per round beyond local training, bytes per site per round (plain vs SecAgg+), 50 simulated sites.

Usage: python bench/bench_federation.py [--parts overhead,bytes,scale] [--scale-sites 50 --scale-rounds 5] [--write]

1. Overhead (federation_overhead.py). One N-round run (3 sites x 10 synthetic
   patients, the small model of tests/test_federation_deploy.py) in (a)
   Flower's simulation engine and (b) a real deployment on 127.0.0.1
   (federation_deploy.py: SuperLink with TLS, site authentication, three
   SuperNodes), against centralised DP training on the union of the sites'
   training patients for the same number of epochs with the same TrainConfig
   and sigma. Process start (Ray; SuperLink and SuperNodes) is timed apart
   from the run. Per-round overhead =
   (run wall time - sum of the sites' fit "seconds" in run.json / P) / rounds,
   P = sites training at once (min(sites, Ray actors or CPU cores)).
2. Bytes (federation_bytes.py). A ClientApp mod outside secaggplus_mod
   measures every reply a site sends (and every message it receives) as
   Flower 1.41 ships it: the sum of the deflated sizes of the message's
   unique inflatable objects (what the SuperNode pushes), and the size of the
   whole message as one protobuf.
3. Scale (federation_scale.py). Many small sites (3 patients, 3 folds) for a
   few rounds in the simulation engine; peak memory = the largest sum, over
   one sample, of the RSS (and PSS, which counts shared pages once) of the
   simulation process and all its descendants (Ray's GCS, raylet, workers),
   sampled every 0.5 s with psutil.

Every simulation runs in a fresh subprocess (its own Ray): simulate() of
server/federation/simulation.py, the function behind `semiofed coordinator
simulate`, with the byte-counting mod added and Ray's start and the ServerApp's
main timed apart (federation_sim.py). Work files and results:
/tmp/semiofed-bench/federation/ (SEMIOFED_BENCH_DIR).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from federation_bytes import bytes_part, render_bytes  # noqa: E402
from federation_overhead import child_central, overhead_part, render_overhead  # noqa: E402
from federation_runs import BENCH_DIR, RESULTS  # noqa: E402
from federation_scale import render_scale, resummarise, scale_part  # noqa: E402
from federation_sim import child_simulate  # noqa: E402
from report import write_section  # noqa: E402

PARTS = {"overhead": overhead_part, "bytes": bytes_part, "scale": scale_part}
SECTION_TITLES = {"overhead": "Federation: overhead per round", "bytes": "Federation: bytes per site per round",
                  "scale": "Federation: many simulated sites"}
CHILDREN = {"sim": child_simulate, "central": child_central}


def render(results: dict[str, Any]) -> str:
    """The markdown section of every part measured so far."""
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
        result = CHILDREN[kind](spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in (*PARTS, "report")]
    if unknown:
        parser.error(f"--parts {','.join(unknown)} is not known: use some of {', '.join((*PARTS, 'report'))}")
    for part in parts:
        if part == "report":
            resummarise(results)
            continue
        PARTS[part](args, results)
        RESULTS.write_text(json.dumps(results, indent=1))
    body = render(results)
    print(body)
    if args.write and all(p in results for p in PARTS):
        print("written to", write_section("federation", "Federation: overhead per round, bytes per site, 50 sites", body))
    elif args.write:  # some parts only (the others not measured on this machine yet): each in a section of its own
        for part in (p for p in parts if p in PARTS):
            print("written to", write_section(f"federation-{part}", SECTION_TITLES[part], render({part: results[part]})))


if __name__ == "__main__":
    main()
