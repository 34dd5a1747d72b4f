"""`semiofed audit verify` and `audit report` on real site ledgers, and the ledger `site train` leaves behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dp_synthetic import populate
from semiofed.cli import audit_cmd
from semiofed.cli.train_cmd import budget, train
from semiofed.common.privacy.budgeted_run import record_release
from semiofed.client.site import init_site
from semiofed.common.errors import SemiofedError
from semiofed.common.privacy.ledger import KIND_FEDERATED, read_entries
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.privacy.accountant import _epsilon_of

SIGMA, Q, STEPS = 1.2, 0.1, 10


def make_site(root: Path, site_id: str, rounds: int):
    """An initialised site whose ledger holds `rounds` federated releases, recorded as the client records them."""
    site = init_site(root, site_id, PrivacyPolicy(max_epsilon=8.0))
    for r in range(1, rounds + 1):
        record_release(site.privacy, kind=KIND_FEDERATED, run_id="fed-1", round=r, update_sha256=f"{r:064x}",
                       noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS, clipping_norm=1.0,
                       epsilon_cumulative=_epsilon_of([(SIGMA, Q, STEPS * r)], site.policy.target_delta))
    return site


def tamper(ledger: Path) -> None:
    lines = ledger.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"round":1', b'"round":7')
    ledger.write_bytes(b"".join(lines))


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    return make_site(root / "hospital-a", "hospital-a", 3), make_site(root / "hospital-b", "hospital-b", 2)


def test_verify_accepts_an_honest_ledger_and_rejects_a_tampered_one(sites, tmp_path):
    site = sites[0]
    runner = CliRunner()
    args = ["verify", "--ledger", str(site.layout.ledger_file), "--site-key", str(site.layout.public_key)]
    result = runner.invoke(audit_cmd.app, args)
    assert result.exit_code == 0, result.output
    assert "VERIFIED" in result.stdout and "site hospital-a, 3 entries" in result.stdout

    copy = tmp_path / "ledger.jsonl"
    copy.write_bytes(site.layout.ledger_file.read_bytes())
    tamper(copy)
    result = runner.invoke(audit_cmd.app, ["verify", "--ledger", str(copy), "--site-key", str(site.layout.public_key),
                                           "--format", "json"])
    assert result.exit_code == 1
    shown = json.loads(result.stdout)
    assert shown["verified"] is False and [(p["seq"], p["kind"]) for p in shown["problems"]] == [(0, "tampered")]
    assert "NOT VERIFIED" in result.stderr and "line 1 seq 0: tampered" in result.stderr


def test_verify_with_another_sites_key_fails(sites):
    a, b = sites
    result = CliRunner().invoke(audit_cmd.app, ["verify", "--ledger", str(a.layout.ledger_file),
                                                "--site-key", str(b.layout.public_key)])
    assert result.exit_code == 1 and "bad-signature" in result.stdout


def test_bad_input_is_one_line_and_exit_2(sites, tmp_path):
    """Through the real entry point: a missing ledger is a domain error, not a traceback."""
    cmd = [sys.executable, "-m", "semiofed.cli", "audit", "verify", "--ledger", str(tmp_path / "missing.jsonl"),
           "--site-key", str(sites[0].layout.public_key)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"COLUMNS": "300"})
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "missing.jsonl is missing. Fix:" in out.stderr
    assert "Traceback" not in out.stderr


def test_report_is_self_contained_with_one_plot_per_site(sites, tmp_path):
    a, b = sites
    ledgers = tmp_path / "ledgers"
    (ledgers / "hospital-a").mkdir(parents=True)
    (ledgers / "hospital-a" / "ledger.jsonl").write_bytes(a.layout.ledger_file.read_bytes())
    (ledgers / "hospital-a" / "site_key.pub").write_bytes(a.layout.public_key.read_bytes())
    (ledgers / "hospital-b.jsonl").write_bytes(b.layout.ledger_file.read_bytes())  # the <site>.jsonl + <site>.pub form
    (ledgers / "hospital-b.pub").write_bytes(b.layout.public_key.read_bytes())
    out = tmp_path / "report" / "audit.html"

    result = CliRunner().invoke(audit_cmd.app, ["report", "--ledgers", str(ledgers), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.count("<svg") == 2 and page.count("</svg>") == 2
    assert not re.search(r"https?://", page), re.search(r".{60}https?://.{60}", page)
    assert "<script" not in page and "<link" not in page
    assert "Site hospital-a" in page and "Site hospital-b" in page and "fed-1" in page
    assert page.count(">verified<") == 4  # summary table and site table, per site

    tamper(ledgers / "hospital-b.jsonl")
    result = CliRunner().invoke(audit_cmd.app, ["report", "--ledgers", str(ledgers), "--out", str(out)])
    assert result.exit_code == 1 and "hospital-b: 2 entries, NOT VERIFIED" in result.stdout
    page = out.read_text(encoding="utf-8")
    assert "NOT VERIFIED: 1 problem" in page and "tampered" in page and page.count("<svg") == 2


def test_report_without_ledgers_says_how_to_lay_them_out(tmp_path):
    result = CliRunner().invoke(audit_cmd.app, ["report", "--ledgers", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert isinstance(result.exception, SemiofedError) and "one folder per site" in str(result.exception)
    assert not (tmp_path / "r.html").exists()


def test_site_train_leaves_a_ledger_that_audit_verify_accepts(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=6.0))
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12)
    app = typer.Typer()
    app.command("train")(train)
    app.command("budget")(budget)
    small = ["--temporal", "attn", "--hidden", "8", "--segments", "4", "--batch-patients", "3", "--epochs", "1"]
    result = CliRunner().invoke(app, ["train", "--site-dir", str(site.layout.root), "--noise-multiplier", "2.0",
                                      "--name", "first", "--format", "json", *small])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    result = CliRunner().invoke(app, ["train", "--site-dir", str(site.layout.root), "--no-dp", *small])
    assert result.exit_code == 0, result.output  # a non-private run is no DP release: nothing to record

    (entry,) = read_entries(site.layout.ledger_file)
    meta = json.loads((Path(report["checkpoint"]) / "model.json").read_text())
    assert entry["kind"] == "local" and entry["round"] == 0 and entry["run_id"] == "first" and entry["site_id"] == "s1"
    assert entry["update_sha256"] == meta["update_sha256"]
    assert entry["epsilon_cumulative"] == report["epsilon_spent"] and entry["steps"] == report["steps"]
    assert entry["noise_multiplier"] == 2.0 and entry["sample_rate"] == report["sample_rate"]

    result = CliRunner().invoke(audit_cmd.app, ["verify", "--ledger", str(site.layout.ledger_file),
                                                "--site-key", str(site.layout.public_key), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verified"] is True


def test_training_is_refused_before_any_step_when_the_ledger_is_broken(tmp_path):
    site = make_site(tmp_path / "site", "s1", 1)
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12)
    tamper(site.layout.ledger_file)
    from semiofed.client.training.local import LocalTrainingOptions, train_site
    from semiofed.common.privacy.ledger import LedgerError

    ledger_before = site.layout.ledger_file.read_bytes()
    with pytest.raises(LedgerError, match="does not verify"):
        train_site(site.layout.root, LocalTrainingOptions(epochs=1, noise_multiplier=2.0, batch_patients=3,
                                                          temporal="attn", hidden=8, n_segments=4))
    assert not site.layout.checkpoints_dir.exists() or not any(site.layout.checkpoints_dir.iterdir())
    # no step was reserved or booked: the accountant holds only the release the ledger already had (it is brought
    # up to the ledger before anything else), and the ledger is as it was
    accountant = json.loads((site.layout.privacy_dir / "accountant.json").read_text())
    assert accountant["history"] == [[SIGMA, Q, STEPS]]
    assert site.layout.ledger_file.read_bytes() == ledger_before
