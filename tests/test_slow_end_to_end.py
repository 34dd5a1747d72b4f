"""Slow suites (run by CI when time allows): the quick demo (federation, audit, report), and `site prepare --workers 2`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semiofed.client.site import init_site
from semiofed.common.records import schema as rec

CLI = [sys.executable, "-m", "semiofed.cli"]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["default", "--deployment"])
def test_quick_demo_federates_audits_and_reports(tmp_path: Path, model_dir: Path, engine: str) -> None:
    """`demo --quick` federates in the simulation engine by default; --deployment runs real SuperLink/SuperNode processes."""
    out = tmp_path / "demo"
    done = subprocess.run([*CLI, "demo", "--quick", "--out", str(out), "--format", "json", *([engine] if engine != "default" else [])],
                          capture_output=True, text=True, env=os.environ | {"SEMIOFED_PROGRESS": "off"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["audit_verified"] is True and Path(summary["final_checkpoint"]).is_dir()
    report = json.loads(Path(summary["report_json"]).read_text())
    assert [s["site"] for s in report["sites"]] == ["site_01", "site_02", "site_03"]
    assert all(s["failed"] == 0 and s["records"] >= 3 for s in report["sites"])
    assert report["run"]["status"] == "finished" and len(report["run"]["rounds"]) == 2
    assert ("real local deployment" if engine == "--deployment" else "simulation engine") in report["federation_mode"]
    assert all(s["records"] == 4 for s in report["sites"])  # the quick cohort: 4 patients per site, one seizure each
    for site, audit in report["audit"].items():
        # a local-only run, one entry per federated round the site trained and one per evaluation it released
        # (the last round only, by default), within the site's budget
        trained = sum(site in r["fit"] for r in report["run"]["rounds"])
        evaluated = sum(site in r.get("evaluate", {}) for r in report["run"]["rounds"])
        assert evaluated <= 1 and audit["entries"] == 1 + trained + evaluated and audit["epsilon"][-1]["epsilon_cumulative"] <= audit["epsilon_max"] * 1.01
    assert set(report["federated"]["sites"]) == set(report["audit"]) == set(report["centralised"]["sites"])
    # the run started from the model of the public reference alone, which the report shows beside it
    public = report["public_only"]
    assert report["run"]["config"]["resume-from"] == public["checkpoint"] and set(public["sites"]) == set(report["audit"])
    # what the federation adds over each site alone and over the public model, paired on the same held-out seizures
    gain = report["federation_gain"]
    assert set(gain) == {"over_local_only", "over_public_only"}
    assert all(set(g) == {"balanced_accuracy", "auroc"} and len(g["auroc"]["ci95"]) == 2 for g in gain.values())
    assert "Federated model over the public model alone" in Path(summary["report_html"]).read_text()
    page = Path(summary["report_html"]).read_text()
    assert page.count("<svg") >= 4 and "https://" not in page


def test_prepare_with_two_workers_matches_one(tmp_path: Path, videos_dir: Path, model_dir: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("carphone_pristine.mp4", "mmaction2_tests_test.avi"):
        shutil.copy(videos_dir / name, root / name)
    manifest = root / "manifest.csv"
    manifest.write_text("video,patient_id,seizure_id,label\ncarphone_pristine.mp4,P1,S1,FOS\n"
                        "mmaction2_tests_test.avi,P2,S1,TCS\n")
    stores = []
    for workers in (1, 2):
        site = init_site(tmp_path / f"site{workers}", f"w{workers}")
        # the same secret, so both stores use the same record ids
        site.layout.pseudonym_key.write_text((tmp_path / "site1" / "keys" / "pseudonym.key").read_text())
        run = subprocess.run([*CLI, "site", "prepare", "--site-dir", str(site.layout.root), "--manifest", str(manifest),
                              "--workers", str(workers), "--format", "json"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        stores.append(site.layout.records_dir)
    ids = sorted(p.name for p in stores[0].iterdir())
    assert ids == sorted(p.name for p in stores[1].iterdir()) and len(ids) == 2
    for record_id in ids:
        one, two = rec.read_record(stores[0] / record_id), rec.read_record(stores[1] / record_id)
        assert one.meta() == two.meta()
        for key in rec.ARRAY_KEYS:
            if key == rec.SNIPPET_FEATURES:
                # a worker runs torch on cpu_count/workers threads: float sums round differently
                assert np.allclose(one.arrays[key], two.arrays[key], rtol=1e-4, atol=1e-5), key
            else:
                assert np.array_equal(one.arrays[key], two.arrays[key]), key
