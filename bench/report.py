"""Write one benchmark's section into docs/benchmarks.md, with the machine and the date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by its script under `bench/`; re-run the script to refresh it.\n"


def machine() -> str:
    """One line describing this machine: CPU model, cores, memory, GPU if any."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    mem = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {cores} cores{mem}{gpu}, Python {platform.python_version()}"


def cohort_arguments(cohorts: list[Path], design: list[Path]) -> str:
    """The ` --cohort ... [--design ...]` part of a bench's command line as a section prints it (COHORTS/name)."""
    text = " --cohort " + " ".join(f"COHORTS/{c.name}" for c in cohorts)
    return text + (" --design " + " ".join(f"COHORTS/{c.name}" for c in design) if design else "")


def write_section(name: str, title: str, body: str) -> Path:
    """Replace (or append) the section `name` of docs/benchmarks.md."""
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else HEADER
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    stamp = f"Machine: {machine()}. Date: {dt.date.today().isoformat()}."
    section = f"{start}\n## {title}\n\n{stamp}\n\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(BENCHMARKS_MD)
    return BENCHMARKS_MD
