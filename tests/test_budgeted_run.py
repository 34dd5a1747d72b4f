"""The one budgeted DP run: one update hash an auditor can recompute, and trainings at once that cannot forget spend."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from dp_synthetic import populate
from site_files import readable_by_others
from semiofed.client.site import init_site, open_site
from semiofed.client.training.local import LocalTrainingOptions, train_site
from semiofed.common.errors import SemiofedError
from semiofed.common.learning.checkpoint import load_checkpoint
from semiofed.common.learning.weights import get_weights, update_sha256
from semiofed.common.privacy.accountant import PlannedRun, _epsilon_of
from semiofed.common.privacy.budgeted_run import budgeted_run
from semiofed.common.privacy.ledger import KIND_LOCAL, read_entries
from semiofed.common.privacy.policy import PrivacyPolicy

SMALL = dict(temporal="attn", hidden=8, n_segments=4, batch_patients=3, epochs=1, streams=("keypoints",))


def test_local_run_is_named_by_the_hash_an_auditor_recomputes_from_the_checkpoint(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=6.0))
    populate(site.layout.records_dir, n_patients=9, dim=16, n_snippets=12)
    result = train_site(site.layout.root, LocalTrainingOptions(noise_multiplier=2.0, run_name="named", folds=3, **SMALL))
    (entry,) = read_entries(site.layout.ledger_file)
    recomputed = update_sha256(get_weights(load_checkpoint(result.checkpoint).model))
    assert entry["update_sha256"] == recomputed and entry["run_id"] == "named"
    # accountant, ledger, checkpoint: nobody else on the machine reads what the site spent or trained
    assert readable_by_others(site.layout.root, public=(site.layout.public_key,)) == []


def _hold_a_run(site_dir: str, started: "multiprocessing.synchronize.Event", seconds: float) -> None:
    site = open_site(Path(site_dir))
    with budgeted_run(site.privacy, PlannedRun(1.5, 0.5, 3), kind=KIND_LOCAL, run_id="first") as run:
        started.set()
        time.sleep(seconds)  # the other training arrives while this one holds the budget
        for _ in range(3):
            run.step(noise_multiplier=1.5, sample_rate=0.5)
        run.release([np.zeros((2, 2), np.float32)])


def test_two_trainings_at_once_both_stay_on_the_books(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=50.0))
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    other = ctx.Process(target=_hold_a_run, args=(str(site.layout.root), started, 2.0))
    other.start()
    try:
        assert started.wait(60), "the first training never started"
        # the second run was prepared while the first was in flight; it must compose, not overwrite
        with budgeted_run(site.privacy, PlannedRun(1.5, 0.5, 3), kind=KIND_LOCAL, run_id="second") as run:
            for _ in range(3):
                run.step(noise_multiplier=1.5, sample_rate=0.5)
            run.release([np.ones((2, 2), np.float32)])
    finally:
        other.join(60)
    assert other.exitcode == 0
    spent = site.privacy.accountant().epsilon_spent()
    assert spent == pytest.approx(_epsilon_of([(1.5, 0.5, 6)], site.policy.target_delta))
    entries = read_entries(site.layout.ledger_file)
    assert [e["run_id"] for e in entries] == ["first", "second"]
    assert entries[-1]["epsilon_cumulative"] == pytest.approx(spent)


def test_a_run_that_releases_nothing_is_refused_and_its_steps_stay_spent(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=50.0))
    with pytest.raises(SemiofedError, match="without its update"):
        with budgeted_run(site.privacy, PlannedRun(1.5, 0.5, 2), kind=KIND_LOCAL, run_id="lost") as run:
            run.step(noise_multiplier=1.5, sample_rate=0.5)
    assert site.privacy.accountant().epsilon_spent() == pytest.approx(_epsilon_of([(1.5, 0.5, 1)], 1e-5))
    assert read_entries(site.layout.ledger_file) == []


def _release(site, run_id: str, steps: int = 3) -> None:
    with budgeted_run(site.privacy, PlannedRun(1.5, 0.5, steps), kind=KIND_LOCAL, run_id=run_id) as run:
        for _ in range(steps):
            run.step(noise_multiplier=1.5, sample_rate=0.5)
        run.release([np.full((2, 2), float(steps), np.float32)])


def test_deleting_or_rolling_back_the_accountant_never_forgets_what_the_ledger_signed(tmp_path):
    from semiofed.common.audit.verify import verify_ledger
    from semiofed.common.privacy.accountant import ACCOUNTANT_FILE
    from semiofed.common.privacy.keys import load_public_key

    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=50.0))
    _release(site, "one")
    old_copy = (site.layout.privacy_dir / ACCOUNTANT_FILE).read_bytes()
    _release(site, "two", steps=4)
    signed = read_entries(site.layout.ledger_file)[-1]["epsilon_cumulative"]

    (site.layout.privacy_dir / ACCOUNTANT_FILE).unlink()  # an operator "resets" the budget
    assert site.privacy.accountant().epsilon_spent() == pytest.approx(signed)
    (site.layout.privacy_dir / ACCOUNTANT_FILE).write_bytes(old_copy)  # or restores an older backup
    assert site.privacy.accountant().epsilon_spent() == pytest.approx(signed)
    edited = json.loads(old_copy)  # or edits the history by hand: fewer steps, more noise
    edited["history"] = [[50.0, 0.01, 1]]
    (site.layout.privacy_dir / ACCOUNTANT_FILE).write_text(json.dumps(edited))
    assert site.privacy.accountant().epsilon_spent() == pytest.approx(signed)
    # the next release composes on the whole signed history, and the auditor agrees with every entry
    (site.layout.privacy_dir / ACCOUNTANT_FILE).unlink()
    _release(site, "three")
    expected = _epsilon_of([(1.5, 0.5, 3), (1.5, 0.5, 4), (1.5, 0.5, 3)], site.policy.target_delta)
    assert read_entries(site.layout.ledger_file)[-1]["epsilon_cumulative"] == pytest.approx(expected)
    assert verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key)).ok
    # `site budget` (the local summary) reads the same, never less than the ledger
    from semiofed.client.training.local import site_budget
    (site.layout.privacy_dir / ACCOUNTANT_FILE).unlink()
    assert site_budget(site.layout.root)["epsilon_spent"] == pytest.approx(expected)
