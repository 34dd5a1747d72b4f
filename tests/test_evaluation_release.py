"""Evaluation is not an oracle: a curious coordinator that chooses the weights, the seed, the folds and the test
fold gets one noisy release per evaluation, charged to the site's budget and signed, about a set of patients the
site chose and the coordinator cannot compute; a site evaluates a run at most as often as its policy allows and
never a test fold of fewer patients than its minimum.

Real SiteTask on real site directories (synthetic records), real ledgers and the real auditor.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dp_synthetic import populate
from semiofed.client.site import init_site
from semiofed.client.training.federated_evaluation import release_vector
from semiofed.client.training.site_split import assign_folds, split_key
from semiofed.client.training.federated_round import RoundDeclined, SiteSettings, SiteTask
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.federation import evaluation
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.learning.classifier import build_classifier, classifier_config
from semiofed.common.learning.weights import get_weights, set_weights
from semiofed.common.privacy.accountant import release_epsilon
from semiofed.common.privacy.keys import load_public_key
from semiofed.common.privacy.ledger import KIND_EVALUATION, read_entries
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.version import semiofed_version

SMALL = FederationConfig(rounds=2, local_epochs=1, batch_patients=3, temporal="attn", hidden=8, embed_dim=8, n_segments=4,
                         stcnn_dim=16, noise_multiplier=1.0, semiofed_version=semiofed_version())


def _site(root, name="hospital-a", n_patients=10, **policy):
    site = init_site(root / name, name, PrivacyPolicy(max_epsilon=100.0, **policy))
    populate(site.layout.records_dir, n_patients=n_patients, dim=16, n_snippets=12, seed=0)
    return site


def _weights(seed: int = 0):
    return get_weights(build_classifier(classifier_config(SMALL), seed=seed))


def _names(patients):
    return sorted(p.pseudonym for p in patients)


def test_the_coordinators_seed_does_not_choose_the_held_out_patients(tmp_path):
    site = _site(tmp_path)
    settings = SiteSettings(site.layout.root)
    base = SiteTask(settings, SMALL)
    for seed in (1, 7, 12345):
        other = SiteTask(settings, replace(SMALL, seed=seed))
        assert _names(other.test) == _names(base.test) and _names(other.validation) == _names(base.validation)
    # balanced and stratified: 10 patients of alternating class in 5 folds, 2 per fold, one of each class
    assert len(base.test) == len(base.validation) == 2 and len(base.train) == 6
    assert sorted(int(np.bincount([s.label for s in p.seizures]).argmax()) for p in base.test) == [0, 1]


def test_a_patient_added_later_moves_no_one(tmp_path):
    site = _site(tmp_path)
    settings = SiteSettings(site.layout.root)
    task = SiteTask(settings, SMALL)
    key = split_key(site.pseudonym_secret())
    before = assign_folds(task.train + task.validation + task.test, SMALL.folds, key)
    populate(site.layout.records_dir, n_patients=13, dim=16, n_snippets=12, seed=0)  # three more patients
    after_task = SiteTask(settings, SMALL)
    everyone = after_task.train + after_task.validation + after_task.test
    assert len(everyone) == 13
    import json
    kept = json.loads((site.layout.privacy_dir / "patient-folds.json").read_text())[str(SMALL.folds)]
    assert {p: kept[p] for p in before} == before
    assert set(_names(task.test)) <= set(_names(after_task.test))
    # another site's key places the same pseudonyms differently: the placement is not a public function
    other_key = split_key(b"another site's pseudonym secret")
    assert assign_folds(everyone, SMALL.folds, other_key) != assign_folds(everyone, SMALL.folds, key)


def test_one_patient_moves_the_release_by_at_most_one(tmp_path):
    """The sensitivity the charge assumes: removing any one patient changes the vector by L2 norm <= 1."""
    site = _site(tmp_path)
    task = SiteTask(SiteSettings(site.layout.root), SMALL)
    model = build_classifier(classifier_config(SMALL), seed=0)
    set_weights(model, _weights(3))
    full = release_vector(model, task.validation, task.test, n_segments=SMALL.n_segments, n_classes=2)
    for held in ("validation", "test"):
        patients = getattr(task, held)
        for i in range(len(patients)):
            rest = patients[:i] + patients[i + 1:]
            val, test = (rest, task.test) if held == "validation" else (task.validation, rest)
            without = release_vector(model, val, test, n_segments=SMALL.n_segments, n_classes=2)
            assert 0 < np.linalg.norm(full - without) <= 1.0 + 1e-9


def _curious_weights(model, **arrays: np.ndarray) -> list[np.ndarray]:
    """A coordinator's chosen weights: seed-3 weights with the named arrays (state_dict names) replaced."""
    names = list(model.state_dict())
    weights = _weights(3)
    for name, array in arrays.items():
        weights[names.index(name)] = np.asarray(array, dtype=np.float32)
    return weights


def _uncapped_losses(model, patient) -> np.ndarray:
    """Independently of release_vector: the patient's mean loss at each grid temperature, with no cap."""
    from semiofed.common.learning.metrics import softmax
    from semiofed.common.learning.trainer import predict_logits

    logits = predict_logits(model, patient.seizures, n_segments=SMALL.n_segments)
    labels = np.array([s.label for s in patient.seizures])
    return np.array([np.mean(-np.log(np.clip(softmax(logits, t)[np.arange(len(labels)), labels], 1e-12, 1.0)))
                     for t in evaluation.TEMPERATURE_GRID])


def test_the_loss_cap_bounds_a_patient_under_extreme_weights_a_coordinator_chooses(tmp_path):
    """Harmless weights move the release by ~0.2 without any cap; a curious coordinator instead sends a head that
    is certain of class 0 (bias +-1e4), so a validation patient with class-1 seizures has an enormous loss at every
    temperature. Removing that patient must still move the release by at most 1: the cap, not the weights, bounds it."""
    site = _site(tmp_path)
    task = SiteTask(SiteSettings(site.layout.root), SMALL)
    model = build_classifier(classifier_config(SMALL), seed=0)
    weights = _curious_weights(model, **{"head.bias": [1e4, -1e4]})
    set_weights(model, weights)
    scale = evaluation.NLL_CAP * np.sqrt(len(evaluation.TEMPERATURE_GRID))
    full = release_vector(model, task.validation, task.test, n_segments=SMALL.n_segments, n_classes=2)
    assert np.isfinite(full).all()
    worst_uncapped = 0.0
    for i, patient in enumerate(task.validation):
        without = release_vector(model, task.validation[:i] + task.validation[i + 1:], task.test,
                                 n_segments=SMALL.n_segments, n_classes=2)
        moved = np.linalg.norm(full - without)
        uncapped = np.linalg.norm(_uncapped_losses(model, patient)) / scale  # what the move would be without the cap
        assert moved <= 1.0 + 1e-9, (patient.pseudonym, moved, uncapped)
        if uncapped > 1.0:  # the cap binds: the patient moves the vector by exactly its bound
            assert moved == pytest.approx(1.0)
        worst_uncapped = max(worst_uncapped, uncapped)
    # the attack works on the uncapped loss (the stratified validation fold holds a class-1 patient): without the
    # cap one patient would move the release several times further than the noise is calibrated for
    assert worst_uncapped > 4.0
    # and through the site's real evaluation the curious weights get one bounded, noisy, finite release
    released = task.evaluate(weights, run_id="run-1", round=1)
    assert all(np.isfinite(v) for v in released.values())


def _overflowing_weights(model, task) -> tuple[list[np.ndarray], set[str]]:
    """Weights that make the logits of the validation patient with the largest value of one hidden unit overflow
    float32 to +-inf while every other patient's stay finite (a coordinator would tune them on public guesses of
    the data); returns them and who overflows."""
    import torch

    from semiofed.common.learning.trainer import predict_logits
    from semiofed.common.records.features import segment_indices

    def head(row: np.ndarray, bias: float) -> list[np.ndarray]:
        return _curious_weights(model, **{"head.weight": np.stack([row, -row]), "head.bias": [bias, -bias]})

    def snippet_values(patient) -> np.ndarray:  # the head's class-0 output of every snippet the release reads
        out = []
        with torch.no_grad():
            for seizure in patient.seizures:
                x = seizure.inputs[segment_indices(seizure.inputs.shape[0], SMALL.n_segments, train=False)]
                out.append(model(torch.from_numpy(np.ascontiguousarray(x))[None])[1][0, :, 0].numpy())
        return np.concatenate(out)

    model.eval()
    width, probe, big = model.head.in_features, 1e30, float(np.finfo(np.float32).max)
    best = None
    for unit in range(width):
        set_weights(model, head(np.eye(width)[unit] * probe, 0.0))
        values = [snippet_values(p).astype(np.float64) / probe for p in task.validation]
        for sign in (1.0, -1.0):
            peaks = sorted(float((sign * v).max()) for v in values)
            top, second, lowest = peaks[-1], peaks[-2], min(float((sign * v).min()) for v in values)
            if second <= 0.1:
                continue
            slope, middle = min(3e38, big / top), (top + second) / 2
            # every other logit stays finite: below the ceiling at the second patient, above the floor at the lowest
            if lowest > middle - 1.5 * big / slope and (best is None or (top - second) / top > best[0]):
                best = ((top - second) / top, unit, sign, slope, middle)
    assert best is not None and best[0] > 1e-3, best
    _, unit, sign, slope, middle = best
    weights = head(np.eye(width)[unit] * sign * slope, big - slope * middle)
    set_weights(model, weights)
    overflow = {p.pseudonym for p in task.validation
                if not np.isfinite(predict_logits(model, p.seizures, n_segments=SMALL.n_segments)).all()}
    return weights, overflow


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the overflowed logits
def test_weights_that_overflow_one_patients_logits_do_not_mark_the_release(tmp_path):
    """A loss that is NaN (logits overflowed to +-inf) must count as the cap like any other huge loss: if it reached
    the vector, the release would be NaN exactly when that patient is held out (noise does not hide a NaN), and the
    egress policy would block the reply, so the coordinator would learn from success or failure who is there."""
    site = _site(tmp_path)
    task = SiteTask(SiteSettings(site.layout.root), SMALL)
    model = build_classifier(classifier_config(SMALL), seed=0)
    weights, overflow = _overflowing_weights(model, task)
    assert overflow and overflow != {p.pseudonym for p in task.validation}  # the attack singles patients out
    full = release_vector(model, task.validation, task.test, n_segments=SMALL.n_segments, n_classes=2)
    for i, patient in enumerate(task.validation):
        without = release_vector(model, task.validation[:i] + task.validation[i + 1:], task.test,
                                 n_segments=SMALL.n_segments, n_classes=2)
        assert np.isfinite(full).all() and np.isfinite(without).all(), patient.pseudonym
        assert np.linalg.norm(full - without) <= 1.0 + 1e-9
    released = task.evaluate(weights, run_id="run-1", round=1)
    assert all(np.isfinite(v) for v in released.values())


def test_the_same_query_twice_in_the_same_run_and_round_gets_fresh_noise(tmp_path):
    """Noise seeded by (run, round), or by anything else in the query, would repeat here and could be subtracted
    from the other's release; OS entropy does not repeat."""
    site = _site(tmp_path)
    task = SiteTask(SiteSettings(site.layout.root), SMALL)
    model = build_classifier(classifier_config(SMALL), seed=0)
    weights = _weights(3)
    set_weights(model, weights)
    exact = evaluation.to_metrics(release_vector(model, task.validation, task.test, n_segments=SMALL.n_segments,
                                                 n_classes=2), 2)
    first = task.evaluate(weights, run_id="run-1", round=1)
    second = task.evaluate(weights, run_id="run-1", round=1)
    noise = [np.array([r[k] - exact[k] for k in exact]) for r in (first, second)]
    # both are noisy (sigma 5 on each of 11 coordinates) and their noises differ on every coordinate
    assert all(np.linalg.norm(n) > 1.0 for n in noise)
    assert np.all(noise[0] != noise[1])
    entries = [e for e in read_entries(site.layout.ledger_file) if e["kind"] == KIND_EVALUATION]
    assert [(e["run_id"], e["round"]) for e in entries] == [("run-1", 1), ("run-1", 1)]  # each query is charged


def test_each_evaluation_is_noisy_charged_signed_and_capped(tmp_path):
    site = _site(tmp_path)
    task = SiteTask(SiteSettings(site.layout.root), SMALL)
    weights = _weights()
    spent = task.accountant().epsilon_spent()

    first = task.evaluate(weights, run_id="run-1", round=1)
    second = task.evaluate(weights, run_id="run-1", round=2)

    # the same weights asked twice: fresh noise each time (OS entropy), so repeating the query does not average it away
    assert first != second and first[evaluation.KEY_NOISE] == 5.0
    entries = [e for e in read_entries(site.layout.ledger_file) if e["kind"] == KIND_EVALUATION]
    assert [(e["round"], e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries] == [(1, 5.0, 1.0, 1), (2, 5.0, 1.0, 1)]
    assert task.accountant().epsilon_spent() > spent + release_epsilon(task.evaluation_plan(), 1e-5)
    assert verify_ledger(site.layout.ledger_file, load_public_key(site.layout.public_key)).ok
    # the policy's cap (2 per run): the third query is declined, and nothing more is spent or signed
    ledger = site.layout.ledger_file.read_bytes()
    with pytest.raises(RoundDeclined, match="evaluation"):
        task.evaluate(weights, run_id="run-1", round=3)
    assert site.layout.ledger_file.read_bytes() == ledger
    task.evaluate(weights, run_id="run-2", round=1)  # another run has its own allowance, and pays for it


def test_a_test_fold_smaller_than_the_policy_minimum_is_not_evaluated(tmp_path):
    site = _site(tmp_path, n_patients=10)
    # ten folds of ten patients: one patient per test fold, i.e. each query would describe one patient
    config = replace(SMALL, folds=10)
    for test_fold in range(10):
        task = SiteTask(SiteSettings(site.layout.root), replace(config, test_fold=test_fold))
        assert len(task.test) == 1
        with pytest.raises(RoundDeclined, match="fewer test patients") as declined:
            task.evaluate(_weights(), run_id="run-1", round=1)
        assert "1" not in str(declined.value).split("fold")[0]  # the count stays at the site
    assert read_entries(site.layout.ledger_file) == []


def test_a_decline_for_too_few_patients_does_not_say_how_many(tmp_path):
    """The decline text goes to the coordinator: it may say the site is below the run's folds, never its count."""
    for n_patients, name in ((3, "hospital-three"), (4, "hospital-four"), (7, "hospital-seven")):
        site = _site(tmp_path, name=name, n_patients=n_patients)
        with pytest.raises(RoundDeclined, match="fewer patients than the run's 8 folds") as declined:
            SiteTask(SiteSettings(site.layout.root), replace(SMALL, folds=8))
        text = f"{declined.value} {getattr(declined.value, 'hint', '')}"
        assert str(n_patients) not in text, text


def test_exact_and_no_evaluation_by_policy(tmp_path):
    exact = _site(tmp_path, "hospital-exact", evaluation_release="exact")
    task = SiteTask(SiteSettings(exact.layout.root), SMALL)
    model = build_classifier(classifier_config(SMALL), seed=0)
    set_weights(model, _weights())
    released = task.evaluate(_weights(), run_id="run-1", round=1)
    vector = release_vector(model, task.validation, task.test, n_segments=SMALL.n_segments, n_classes=2)
    assert {k: v for k, v in released.items() if k.startswith(("cm_", "nll_"))} == evaluation.to_metrics(vector, 2)
    assert released[evaluation.KEY_RELEASE] == 2.0 and read_entries(exact.layout.ledger_file) == []  # public by policy
    task.evaluate(_weights(), run_id="run-1", round=2)
    with pytest.raises(RoundDeclined, match="evaluation"):  # still capped
        task.evaluate(_weights(), run_id="run-1", round=3)

    none = _site(tmp_path, "hospital-none", evaluation_release="none")
    with pytest.raises(RoundDeclined, match="releases no evaluation"):
        SiteTask(SiteSettings(none.layout.root), SMALL).evaluate(_weights(), run_id="run-1", round=1)


def test_the_run_sets_its_evaluations_aside_before_choosing_the_noise(tmp_path):
    site = _site(tmp_path)
    config = replace(SMALL, noise_multiplier=0.0, site_epsilon=4.0, rounds=4, evaluate_every=2)
    task = SiteTask(SiteSettings(site.layout.root), config)
    assert config.evaluation_rounds == 2 and task.evaluations_planned() == 2
    task.noise_for_run("run-1")
    import json
    chosen = json.loads((site.layout.privacy_dir / "federated-runs" / "run-1.json").read_text())
    assert chosen["epsilon_evaluation_reserve"] == pytest.approx(2 * task.evaluation_epsilon())
    assert chosen["epsilon_allowance"] == pytest.approx(4.0 - 2 * task.evaluation_epsilon())


def test_the_coordinator_reads_pooled_figures_from_the_releases():
    grid = evaluation.TEMPERATURE_GRID
    # site a: 3 of 4 class-0 patients right, 2 of 2 class-1; site b: 1 of 2, 3 of 4; least loss at grid[3]
    a = {"cm_0_0": 3.0, "cm_0_1": 1.0, "cm_1_0": 0.0, "cm_1_1": 2.0} | {f"nll_t{g}": abs(g - 3) + 1.0 for g in range(len(grid))}
    b = {"cm_0_0": 1.0, "cm_0_1": 1.0, "cm_1_0": 1.0, "cm_1_1": 3.0} | {f"nll_t{g}": abs(g - 3) + 0.5 for g in range(len(grid))}
    out = evaluation.read([a, b])
    assert out["accuracy"] == pytest.approx(9 / 12) and out["patients"] == pytest.approx(12)
    assert out["balanced_accuracy"] == pytest.approx((4 / 6 + 5 / 6) / 2)
    assert out["temperature"] == grid[3]
    # noise can push a share below zero: it is read as zero, never as a negative count
    assert evaluation.read([{**a, "cm_1_0": -2.0}])["balanced_accuracy"] == pytest.approx((3 / 4 + 1.0) / 2)
    assert evaluation.read([]) == {}


def test_the_strategy_evaluates_only_the_rounds_the_run_evaluates():
    config = FederationConfig(rounds=5, evaluate_every=2)
    assert [r for r in range(1, 6) if config.evaluates(r)] == [2, 4, 5]
    assert [r for r in range(1, 6) if FederationConfig(rounds=5).evaluates(r)] == [5]


def test_site_train_holds_out_the_patients_a_federated_run_holds_out(tmp_path):
    """The demo's and the benchmarks' local-only baselines are scored on the federation's held-out patients."""
    from unittest import mock

    from semiofed.client.training import local
    from semiofed.client.training.local import LocalTrainingOptions, train_site

    site = _site(tmp_path)
    seen = {}
    real = local.split_site_patients

    def spy(*args, **kwargs):
        seen["split"] = real(*args, **kwargs)
        return seen["split"]

    with mock.patch.object(local, "split_site_patients", spy):
        train_site(site.layout.root, LocalTrainingOptions(noise_multiplier=2.0, folds=5, test_fold=1, temporal="attn",
                                                          hidden=8, n_segments=4, batch_patients=3, epochs=1,
                                                          streams=("keypoints",)))
    federated = SiteTask(SiteSettings(site.layout.root), replace(SMALL, test_fold=1, streams=("keypoints",)))
    train, val, test = seen["split"]
    assert _names(test) == _names(federated.test) and _names(val) == _names(federated.validation)
