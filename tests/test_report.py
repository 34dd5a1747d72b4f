"""The demo report: self-contained HTML whose every plot renders in headless Chromium (screenshot kept as an artefact)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from semiofed.server.report import build_html, comparison_rows, federation_gain_lines, write_reports

ARTEFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _metrics(rng, n=6):
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    cm = np.zeros((2, 2), int)
    pred = np.where(rng.random(n) < 0.8, y, 1 - y)
    for a, b in zip(y, pred):
        cm[a, b] += 1
    return {"accuracy": float((y == pred).mean()), "balanced_accuracy": 0.75, "auroc": 0.8, "ece": 0.1,
            "f1_macro": 0.7, "n_seizures": n, "confusion_matrix": cm.tolist()}


def sample_report() -> dict:
    """A report with the structure server/demo.py writes: 2 sites, 2 rounds, one declined round."""
    rng = np.random.default_rng(0)
    sites = ["site-a", "site-b"]
    evaluate = {s: {"balanced_accuracy": 0.6, "accuracy": 0.7, "patients": 4.2} for s in sites}
    rounds = [{"round": r, "evaluate": evaluate, "aggregate": {"balanced_accuracy": 0.6 + 0.1 * r, "accuracy": 0.7},
               "fit": {s: {"epsilon_spent": 1.0 * r} for s in sites},
               "declined": {"site-b": "training refused before any step: ... above this site's maximum"} if r == 2 else {}}
              for r in (1, 2)]
    y = rng.integers(0, 2, 12).tolist()
    p = rng.dirichlet([1, 1], 12).tolist()
    pooled = _metrics(rng, 12)
    return {
        "federation_mode": "real local deployment", "sites": [{"site": s, "records": 6, "failed": 0, "pose_detection": 0.97} for s in sites],
        "local_only": {s: {"metrics": _metrics(rng)} for s in sites},
        "centralised": {"sites": {s: _metrics(rng) for s in sites}, "pooled": pooled, "y": y, "p": p},
        "federated": {"sites": {s: _metrics(rng) for s in sites}, "pooled": pooled, "y": y, "p": p},
        "run": {"run_id": "1", "status": "finished", "config": {"labels": "FOS,TCS"}, "rounds": rounds},
        "audit": {s: {"verified": True, "problems": [], "entries": 2, "epsilon_max": 8.0, "delta": 1e-5,
                      "epsilon": [{"seq": 0, "epsilon_cumulative": 2.0}, {"seq": 1, "epsilon_cumulative": 4.5}]} for s in sites},
        "timeline": {"site": "site-a", "record_id": "r-1", "label": "TCS", "onset_s": 2.0, "generalization_s": 6.0,
                     "estimated_generalisation_s": 6.5, "times": list(np.arange(0, 12, 0.53)),
                     "p_tcs": list(np.clip(np.linspace(0, 1, 23), 0, 1))},
        "clinician": {"seizures": 2, "review": 1, "rows": [
            {"site": "site-a", "record_id": "r-1", "label": "TCS", "decision": "TCS", "confidence": 0.9,
             "top_region": "left_arm", "unusual_score": 0.4, "generalization_s": 6.0, "estimated_generalization_s": 6.5},
            {"site": "site-b", "record_id": "r-2", "label": "FOS", "decision": "review", "confidence": 0.6,
             "top_region": None, "unusual_score": 3.2, "generalization_s": None, "estimated_generalization_s": None}]},
        "final_checkpoint": "/x/final", "timings_s": {"prepare": 10.0}, "seconds": 20.0,
    }


def test_report_html_is_self_contained(tmp_path):
    report = sample_report()
    json_path, html_path = write_reports(tmp_path, report)
    page = html_path.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"https?://", page) and "http://" not in page and "https://" not in page
    assert page.count("<svg") == 5  # rounds, epsilon, confusion, calibration, timeline
    assert json.loads(json_path.read_text())["run"]["status"] == "finished"
    rows = comparison_rows(report)
    assert [r[1] for r in rows] == ["DP per site", "DP per site", "NOT private"]
    # a run started from the public model shows that model alone beside it: what the federation has to beat
    public = sample_report() | {"public_only": {"pooled": dict(report["centralised"]["pooled"])}}
    rows = comparison_rows(public)
    assert [r[:2] for r in rows][1:3] == [["public reference only (no site data)", "public data"],
                                          ["federated (SecAgg+), from the public model", "DP per site"]]
    assert "public reference only" in build_html(public)
    # what the federation adds, paired on the same seizures: a gain, a loss, or no difference shown
    gained = sample_report() | {"federation_gain": {
        "over_local_only": {"balanced_accuracy": {"difference": 0.12, "ci95": [0.03, 0.21]},
                            "auroc": {"difference": 0.05, "ci95": [-0.02, 0.11]}},
        "over_public_only": {"balanced_accuracy": {"difference": -0.08, "ci95": [-0.15, -0.01]},
                             "auroc": {"difference": 0.0, "ci95": [-0.04, 0.04]}}}}
    lines = federation_gain_lines(gained)
    assert lines[0].startswith("Federated model over each site alone") and "+0.12 (95% CI +0.03 to +0.21) (a gain)" in lines[0]
    assert "AUROC +0.05 (95% CI -0.02 to +0.11) (no difference shown)" in lines[0]
    assert "the public model alone" in lines[1] and "-0.08 (95% CI -0.15 to -0.01) (a loss)" in lines[1]
    assert lines[1] in build_html(gained) and federation_gain_lines(sample_report()) == []
    assert "Only 12 held-out seizures" in page  # a quick-demo-sized test set says what its figures mean
    assert "What a clinician reads" in page and "1 flagged as unusual" in page and "left arm" in page
    many = sample_report()
    many["federated"] |= {"y": [0, 1] * 15, "p": [[0.5, 0.5]] * 30}
    assert "held-out seizures:" not in build_html(many) and "30 seizures" in build_html(many)


def test_report_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    _, html_path = write_reports(tmp_path, sample_report())
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,4000"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    match = re.search(r'data-plots="(\d+)/(\d+)"', dom.stdout)
    assert match, dom.stderr[-2000:]
    rendered, total = map(int, match.groups())
    assert total == 5 and rendered == total, f"{rendered} of {total} plots rendered"
    ARTEFACTS.mkdir(exist_ok=True)
    shot = ARTEFACTS / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", html_path.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
