"""`site cv`: patient-grouped folds, every fold charged to the site budget, checked before the first step."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from dp_synthetic import populate
from semiofed.cli.train_cmd import cv
from semiofed.client.training.cross_validation import cross_validate, fold_splits
from semiofed.client.training.local import LocalTrainingOptions, group_patients, site_budget
from semiofed.client.site import init_site
from semiofed.common.learning.trainer import TrainConfig
from semiofed.common.privacy.keys import load_public_key
from semiofed.common.privacy.ledger import read_entries
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.privacy.accountant import PlannedRun, PrivacyBudgetError, SiteAccountant

app = typer.Typer()
app.command("cv")(cv)
app.command("unused")(lambda: None)  # two commands, so `cv` is a sub-command as under `semiofed site`

SMALL = dict(temporal="attn", hidden=8, n_segments=4, batch_patients=3)
SMALL_ARGS = ["--temporal", "attn", "--hidden", "8", "--segments", "4", "--batch-patients", "3"]


def _site(tmp_path, max_epsilon=8.0, n_patients=12):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=max_epsilon))
    records = populate(site.layout.records_dir, n_patients=n_patients, dim=16, n_snippets=12)
    return site, records


def test_folds_are_patient_disjoint_and_every_patient_is_tested_once(tmp_path):
    site, records = _site(tmp_path)
    patients = group_patients(records, ("FOS", "TCS"), ("stcnn", "keypoints"))
    everyone = sorted(p.pseudonym for p in patients)
    splits = fold_splits(patients, 4, seed=3)
    for k, (train, val, test) in enumerate(splits):
        names = [[p.pseudonym for p in part] for part in (train, val, test)]
        assert sorted(sum(names, [])) == everyone  # disjoint and complete within a fold
        assert names[1] == [p.pseudonym for p in splits[(k + 1) % 4][2]]  # validation = the next fold's test set

    result = cross_validate(site.layout.root, LocalTrainingOptions(epochs=1, dp=False, folds=4, seed=3, **SMALL))
    tested = [name for fold in result.folds for name in fold.test_patients]
    assert sorted(tested) == everyone
    assert result.pooled_metrics["n_seizures"] == len(records)


def test_budget_refusal_comes_before_any_step(tmp_path):
    site, records = _site(tmp_path, max_epsilon=2.0)
    options = LocalTrainingOptions(epochs=2, noise_multiplier=3.0, folds=5, **SMALL)
    # every fold alone would fit the budget: the refusal is about all folds together
    accountant = SiteAccountant(site.layout.privacy_dir, site.policy)
    config = TrainConfig(epochs=2, batch_patients=3)
    for train, _, _ in fold_splits(group_patients(records, ("FOS", "TCS"), ("stcnn",)), 5, seed=0):
        single = PlannedRun(3.0, config.sample_rate(len(train)), config.steps(len(train)))
        assert accountant.projected_epsilon(single) < 2.0
    with pytest.raises(PrivacyBudgetError, match="refused before any step") as refused:
        cross_validate(site.layout.root, options, on_epoch=lambda *_: pytest.fail("a fold trained"))
    assert "5 folds" in str(refused.value) and "above this site's maximum 2" in str(refused.value)
    shown = site_budget(site.layout.root)
    assert shown["epsilon_spent"] == 0.0 and shown["steps"] == 0 and shown["runs"] == 0
    assert read_entries(site.layout.ledger_file) == []


def test_json_output_has_per_fold_metrics_and_all_folds_stay_within_epsilon(tmp_path):
    site, records = _site(tmp_path, max_epsilon=8.0)
    result = CliRunner().invoke(app, ["cv", "--site-dir", str(site.layout.root), "--folds", "3", "--epochs", "2",
                                      "--epsilon", "3.0", "--format", "json", *SMALL_ARGS])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [f["fold"] for f in report["per_fold"]] == [0, 1, 2]
    for fold in report["per_fold"]:
        assert {"accuracy", "balanced_accuracy", "f1_macro", "auroc", "ece"} <= set(fold["test"])
        assert fold["steps"] > 0 and fold["n_patients"]["test"] > 0
    assert report["pooled"]["n_seizures"] == len(records)
    assert 2.5 < report["epsilon_spent"] <= 3.0 + 0.02  # all folds together, PRV's reported error bound
    shown = site_budget(site.layout.root)
    assert shown["runs"] == 3 and shown["epsilon_spent"] == pytest.approx(report["epsilon_spent"])
    entries = read_entries(site.layout.ledger_file)  # every fold's spend is signed into the ledger
    assert len(entries) == 3 and entries[-1]["epsilon_cumulative"] == pytest.approx(report["epsilon_spent"])
    verification = verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key))
    assert verification.ok, [str(p) for p in verification.problems]  # the auditor's PLD recomputation agrees
