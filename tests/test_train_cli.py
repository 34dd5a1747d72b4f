"""`site train` and `site budget` through a throwaway Typer app, as the lead will register them."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from dp_synthetic import populate
from semiofed.cli.train_cmd import budget, train
from semiofed.client.site import init_site
from semiofed.common.errors import SemiofedError
from semiofed.common.privacy.policy import PrivacyPolicy

app = typer.Typer()
app.command("train")(train)
app.command("budget")(budget)

SMALL = ["--temporal", "attn", "--hidden", "8", "--segments", "4", "--batch-patients", "3"]


def test_train_then_budget_json(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=6.0))
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--site-dir", str(site.layout.root), "--epochs", "1",
                                 "--noise-multiplier", "2.0", "--format", "json", *SMALL])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dp"] is True and report["epsilon_spent"] > 0
    result = runner.invoke(app, ["budget", "--site-dir", str(site.layout.root), "--format", "json"])
    shown = json.loads(result.stdout)
    assert shown["epsilon_spent"] == report["epsilon_spent"] and shown["epsilon_max"] == 6.0 and shown["delta"] == 1e-5


def test_no_dp_says_loudly_it_is_not_private(tmp_path):
    site = init_site(tmp_path / "site", "s1")
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12)
    result = CliRunner().invoke(app, ["train", "--site-dir", str(site.layout.root), "--epochs", "1", "--no-dp", *SMALL])
    assert result.exit_code == 0, result.output
    assert "NOT differentially private" in result.output
    shown = json.loads(CliRunner().invoke(app, ["budget", "--site-dir", str(site.layout.root), "--format", "json"]).stdout)
    assert shown["epsilon_spent"] == 0.0


def test_refusal_is_a_domain_error(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=0.5))
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12)
    result = CliRunner().invoke(app, ["train", "--site-dir", str(site.layout.root), "--epochs", "20", *SMALL])
    assert isinstance(result.exception, SemiofedError) and "refused before any step" in str(result.exception)
