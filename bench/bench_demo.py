"""Wall time and peak memory of `semiofed demo` (targets on 2 CPU cores: default 20 min, --quick 5 min).

Runs the demo as a user would (the installed CLI, a fresh --out folder),
reads the stage timings from its report.json, and writes the
"demo" section of docs/benchmarks.md. The load average before and after each
run is recorded: other work on the machine slows the demo down.

    python bench/bench_demo.py                   # --quick, then the default demo
    python bench/bench_demo.py --runs quick      # one of them
    python bench/bench_demo.py --from-report quick=DIR --from-report default=DIR   # runs already made
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

RUNS = {"quick": ["--quick"], "default": []}
TARGET_S = {"quick": 300, "default": 1200}
STAGES = ("render", "prepare", "local_baseline", "centralised_baseline", "federation", "evaluation_and_audit")


def run_demo(name: str, out: Path) -> dict:
    """One demo run in a subprocess; its wall time, peak RSS of the largest process and report.json."""
    cli = Path(sys.executable).with_name("semiofed")
    command = [str(cli) if cli.exists() else sys.executable, *([] if cli.exists() else ["-m", "semiofed.cli"]),
               "demo", *RUNS[name], "--out", str(out), "--format", "json"]
    peak_file = out.parent / "peak_rss_kib"
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    # a wrapper process per run, so that the peak RSS of its children is this run's alone
    done = subprocess.run([sys.executable, "-c", _WRAPPER, str(peak_file), *command], capture_output=True, text=True,
                          env=os.environ | {"SEMIOFED_PROGRESS": "off"})
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"semiofed demo {' '.join(RUNS[name])} failed:\n{done.stderr[-3000:]}")
    peak_kib = int(peak_file.read_text())
    return summarise(name, out, wall=wall, peak_gib=peak_kib / 2**20, load=(load_before, os.getloadavg()[0]))


_WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def summarise(name: str, out: Path, *, wall: float | None = None, peak_gib: float | None = None,
              load: tuple[float, float] | None = None) -> dict:
    """The figures of one demo run from its report.json."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"run": name, "wall_s": wall if wall is not None else report["seconds"], "demo_s": report["seconds"],
            "timings": report["timings_s"], "mode": "simulation engine" if "simulation" in report["federation_mode"] else "real deployment",
            "videos": sum(s["records"] + s["failed"] for s in report["sites"]), "held_out": len(report["federated"]["y"]),
            "rounds": len(report["run"]["rounds"]), "peak_gib": peak_gib, "load": load,
            "bal_acc": {k: report[k]["pooled"].get("balanced_accuracy") for k in ("federated", "centralised")}}


def render(results: list[dict]) -> str:
    """The markdown section."""
    lines = ["`python bench/bench_demo.py`: `semiofed demo` as a user runs it, each in a fresh folder.", "",
             "| run | federation | videos | wall (s) | target (s) | render | prepare | local-only | centralised | federation | eval+audit | peak RSS (GiB) | load before/after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["timings"]
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        load = f"{r['load'][0]:.1f} / {r['load'][1]:.1f}" if r["load"] else "-"
        lines.append(f"| {r['run']} | {r['mode']}, {r['rounds']} rounds | {r['videos']} | {r['wall_s']:.0f} | {TARGET_S[r['run']]} | "
                     + " | ".join(f"{t.get(s, 0):.0f}" for s in STAGES) + f" | {peak} | {load} |")
    lines += ["", "Stage times in seconds, from the demo's report.json; the wall time adds start-up (imports, model check). "
              "Peak RSS is that of the largest process (the demo; SuperNode and ClientApp processes are smaller).", "",
              "What the time goes to: `site prepare` costs about 0.8 s per second of video on 2 cores (MediaPipe "
              "pose, hands and face plus I3D, pipelined), so the demo's phantom videos are short (the seizure plus "
              "1.5-4 s either side). A real deployment adds some 60-70 s per round over the simulation engine "
              "(a new ClientApp process per message, the SuperNode's 3 s poll; see the federation section)."]
    held = ", ".join(f"{r['run']} {r['held_out']}" for r in results)
    accuracy = "; ".join(f"{r['run']}: federated {r['bal_acc']['federated']:.2f}, centralised {r['bal_acc']['centralised']:.2f}"
                         for r in results)
    lines += ["", f"Held-out seizures (pooled over sites): {held}. On so few patients the balanced accuracies "
              f"({accuracy}) say little; the utility section has cross-validated figures."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=["quick", "default"])
    parser.add_argument("--from-report", action="append", default=[], metavar="RUN=DIR",
                        help="summarise a demo already run into DIR instead of running it")
    parser.add_argument("--keep", action="store_true", help="keep the demo folders (printed)")
    args = parser.parse_args()
    results = []
    if args.from_report:
        for item in args.from_report:
            name, _, folder = item.partition("=")
            results.append(summarise(name, Path(folder)))
    else:
        for name in args.runs:
            out = Path(tempfile.mkdtemp(prefix=f"semiofed-bench-demo-{name}-"))
            try:
                results.append(run_demo(name, out / "demo"))
                print(json.dumps(results[-1]), flush=True)
            finally:
                if args.keep:
                    print(f"kept {out}")
                else:
                    shutil.rmtree(out, ignore_errors=True)
    print(write_section("demo", "The main job: `semiofed demo` wall time (issue 7)", render(results)))


if __name__ == "__main__":
    main()
