"""The site accountant: refusal before any step, persistence across restarts, agreement with PLD."""

from __future__ import annotations

import json
import math

import pytest

from dp_synthetic import populate
from semiofed.client.training.local import LocalTrainingOptions, site_budget, train_site
from semiofed.client.site import init_site
from semiofed.common.learning import trainer as dp_training
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.privacy.accountant import ACCOUNTANT_FILE, PlannedRun, PrivacyBudgetError, SiteAccountant, pld_epsilon

OPTS = dict(batch_patients=3, temporal="tconv", hidden=8, embed_dim=8, n_segments=4)


@pytest.fixture()
def site(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=3.0, min_noise_multiplier=0.8))
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12)
    return site


def test_over_budget_training_is_refused_before_any_step(site, monkeypatch):
    calls = []
    monkeypatch.setattr(dp_training.Trainer, "dp_step", lambda *a, **k: calls.append(1))
    with pytest.raises(PrivacyBudgetError) as info:
        train_site(site.layout.root, LocalTrainingOptions(epochs=50, noise_multiplier=0.8, **OPTS))
    message = str(info.value)
    assert "refused before any step" in message and "above this site's maximum 3" in message
    assert calls == []
    assert not (site.layout.privacy_dir / ACCOUNTANT_FILE).exists()
    assert not any(site.layout.checkpoints_dir.glob("*")) if site.layout.checkpoints_dir.exists() else True


def test_noise_below_the_site_minimum_is_refused(site):
    with pytest.raises(PrivacyBudgetError, match="below this site's minimum"):
        train_site(site.layout.root, LocalTrainingOptions(epochs=1, noise_multiplier=0.5, **OPTS))


def test_accountant_survives_a_restart_and_runs_compose(site):
    train_site(site.layout.root, LocalTrainingOptions(epochs=1, noise_multiplier=2.0, **OPTS))
    first = site_budget(site.layout.root)
    assert 0 < first["epsilon_spent"] < 3.0 and first["delta"] == 1e-5 and first["epsilon_max"] == 3.0
    reopened = SiteAccountant(site.layout.privacy_dir, site.policy)  # a new process reads the disk
    assert reopened.epsilon_spent() == pytest.approx(first["epsilon_spent"])
    train_site(site.layout.root, LocalTrainingOptions(epochs=1, noise_multiplier=2.0, **OPTS))
    second = site_budget(site.layout.root)
    assert second["epsilon_spent"] > first["epsilon_spent"] and second["runs"] == 2
    # --epsilon picks the noise to land at (not above) the requested total
    train_site(site.layout.root, LocalTrainingOptions(epochs=1, epsilon=2.9, **OPTS))
    assert site_budget(site.layout.root)["epsilon_spent"] == pytest.approx(2.9, abs=0.05)
    assert site_budget(site.layout.root)["epsilon_spent"] <= 2.9 + 1e-9


def test_a_crashed_run_keeps_its_full_reservation(tmp_path):
    policy = PrivacyPolicy(max_epsilon=8.0)
    accountant = SiteAccountant(tmp_path, policy)
    with pytest.raises(KeyboardInterrupt):
        with accountant.run(PlannedRun(1.0, 0.1, 50)):
            accountant.step(noise_multiplier=1.0, sample_rate=0.1)
            # what a killed process leaves behind: the reservation, written before the first step
            on_disk = json.loads((tmp_path / ACCOUNTANT_FILE).read_text())
            assert on_disk["history"] == [[1.0, 0.1, 50]]
            raise KeyboardInterrupt
    # an interrupted (not killed) run records the steps it took
    assert SiteAccountant(tmp_path, policy).history == [(1.0, 0.1, 1)]


def test_corrupt_accountant_state_is_an_error_not_a_reset(tmp_path):
    (tmp_path / ACCOUNTANT_FILE).write_text('{"version": 1, "mechanism": "prv", "privacy_unit": "patient", "history": [[1, 2]]}')
    with pytest.raises(PrivacyBudgetError, match="do not delete it"):
        SiteAccountant(tmp_path, PrivacyPolicy())


@pytest.mark.parametrize("sigma,q,steps", [(1.0, 0.05, 1000), (2.0, 0.3, 60), (0.8, 0.25, 40)])
def test_epsilon_matches_the_independent_pld_accountant_within_one_percent(tmp_path, sigma, q, steps):
    accountant = SiteAccountant(tmp_path, PrivacyPolicy(max_epsilon=100.0))
    ours = accountant.projected_epsilon(PlannedRun(sigma, q, steps))
    reference = pld_epsilon([(sigma, q, steps)], 1e-5)
    assert ours == pytest.approx(reference, rel=0.01)
    assert ours >= reference * 0.999  # the PRV upper bound should not undercut PLD


def test_heterogeneous_history_matches_pld(tmp_path):
    history = [(1.0, 0.1, 100), (2.0, 0.3, 50)]
    accountant = SiteAccountant(tmp_path, PrivacyPolicy(max_epsilon=100.0))
    accountant.history = history[:1]
    ours = accountant.projected_epsilon(PlannedRun(*history[1]))
    assert ours == pytest.approx(pld_epsilon(history, 1e-5), rel=0.01)


def test_full_batch_steps_fold_into_one_gaussian_without_changing_epsilon():
    """q = 1 steps are folded into one Gaussian step (mu-GDP composition is exact): the PRV of the folded history and
    the auditor's folded PLD both match dp-accounting's PLD composed step by step, mixed with subsampled steps too."""
    from dp_accounting.pld import privacy_loss_distribution as pld
    from dp_accounting.privacy_accountant import NeighboringRelation

    from semiofed.common.audit.pld import PLDComposition
    from semiofed.common.privacy.accountant import _epsilon_of, _merged

    def step(sigma, q):
        return pld.from_gaussian_mechanism(standard_deviation=sigma, sampling_prob=q, value_discretization_interval=1e-4,
                                           neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)

    history = [(14.0, 1.0, 1)] * 150 + [(1.0, 0.05, 200), (3.0, 1.0, 20)]
    assert len(_merged(history)) == 2  # the 170 full-batch steps are one entry
    reference = step(14.0, 1.0).self_compose(150).compose(step(1.0, 0.05).self_compose(200)).compose(
        step(3.0, 1.0).self_compose(20)).get_epsilon_for_delta(1e-5)
    composition = PLDComposition()
    for sigma, q, steps in history:
        composition.add(sigma, q, steps)
    assert composition.epsilon(1e-5) == pytest.approx(reference, rel=1e-3)
    assert _epsilon_of(history, 1e-5) == pytest.approx(reference, rel=0.01)


def test_the_noise_search_settles_in_few_accountant_calls_on_any_curve():
    """least_sigma on curves of several shapes: the answer is feasible, within the tolerance of the least feasible
    sigma, never below the floor, found in a handful of calls; an accountant that fails at an extreme sigma counts as
    infeasible there, and an unreachable target is a one-line PrivacyBudgetError."""
    from semiofed.common.privacy.accountant import least_sigma

    curves = {"1/sigma": lambda s: 12.0 / s, "1/sigma^3": lambda s: 40.0 / s**3,
              "exp": lambda s: 30.0 * math.exp(-s), "fails below 0.8": lambda s: 5.0 / s if s >= 0.8 else 1 / 0}
    roots = {"1/sigma": 12.0 / 2.0, "1/sigma^3": (40.0 / 2.0) ** (1 / 3), "exp": math.log(15.0), "fails below 0.8": 2.5}
    for name, curve in curves.items():
        for start in (0.1, 1.0, 50.0):
            sigma, calls = least_sigma(curve, 2.0, floor=0.05, start=start, tolerance=0.02)
            assert curve(sigma) <= 2.0, name
            assert roots[name] <= sigma <= roots[name] / (1 - 0.02), (name, start, sigma)  # bracket width <= 2% of sigma
            assert calls <= 10, (name, start, calls)
    assert least_sigma(lambda s: 1.0 / s, 2.0, floor=0.7)[0] == 0.7  # the floor is feasible: it is the answer
    with pytest.raises(PrivacyBudgetError, match="no noise multiplier"):
        least_sigma(lambda s: 3.0, 2.0, floor=0.5)


def test_the_noise_search_needs_fewer_prv_calls_than_a_bisection(tmp_path):
    """On the demo's kind of run (a site's 3 rounds of subsampled DP-SGD) the search asks the PRV accountant at most 6
    times: a bisection to 2% from a bracket of [0.6, 1] x sigma needed 7, after an RDP bracket of its own."""
    from semiofed.common.privacy.accountant import least_sigma

    accountant = SiteAccountant(tmp_path / "privacy", PrivacyPolicy(max_epsilon=20.0, min_noise_multiplier=0.5))
    for q, steps, target in ((0.5, 30, 8.0), (0.3, 60, 4.0)):
        sigma, calls = least_sigma(lambda s: accountant.projected_epsilon(PlannedRun(s, q, steps)), target, floor=0.5)
        assert accountant.projected_epsilon(PlannedRun(sigma, q, steps)) <= target
        assert accountant.projected_epsilon(PlannedRun(sigma * 0.98, q, steps)) > target
        assert calls <= 6, (q, steps, calls)


def test_the_noise_search_returns_the_least_feasible_sigma(tmp_path):
    """noise_for's sigma keeps the projected PRV epsilon within the target, and 2% less noise would not."""
    accountant = SiteAccountant(tmp_path / "privacy", PrivacyPolicy(max_epsilon=20.0, min_noise_multiplier=0.5))
    accountant.history = [(2.0, 0.5, 6), (5.0, 1.0, 1)]
    spent = accountant.epsilon_spent()
    target = spent + 2.0
    sigma = accountant.noise_for(target_epsilon=target, sample_rate=1.0, steps=21)
    assert accountant.projected_epsilon(PlannedRun(sigma, 1.0, 21)) <= target
    assert accountant.projected_epsilon(PlannedRun(sigma * 0.97, 1.0, 21)) > target
