"""Patient-level DP-SGD: exact per-patient gradients, clipping per patient, and a site training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dp_synthetic import populate
from semiofed.client.training.local import LocalTrainingOptions, train_site
from semiofed.client.site import init_site
from semiofed.common.learning.checkpoint import load_checkpoint
from semiofed.common.learning.classifier import TEMPORAL_MODELS, ClassifierConfig, build_classifier
from semiofed.common.learning.trainer import Patient, Seizure, TrainConfig, Trainer, make_batch, patient_loss
from semiofed.common.errors import SemiofedError
from semiofed.common.learning.per_sample import PerPatientGradients, clip_and_noise
from semiofed.common.privacy.policy import PrivacyPolicy

SMALL = dict(stcnn_dim=16, embed_dim=8, hidden=6, n_segments=4)


@pytest.mark.parametrize("temporal", TEMPORAL_MODELS)
def test_per_patient_gradients_match_a_loop_over_patients(temporal):
    config = ClassifierConfig(temporal=temporal, **SMALL)
    model = build_classifier(config, seed=0).double()
    x = torch.randn(3, 5, 4, config.input_dim, dtype=torch.double)
    y = torch.randint(0, 2, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.double)
    weights = torch.tensor([1.0, 2.5], dtype=torch.double)
    side = torch.randint(0, 2, (3, 5)).double()  # the side output's labels, given for some seizures only
    given = mask * torch.tensor([[1, 0, 1, 1, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.double)
    assert config.side_output
    batched = PerPatientGradients(model).compute(lambda m: patient_loss(m, x, y, mask, weights, (side, given)), 3)
    for p in range(3):
        model.zero_grad()
        k = int(mask[p].sum())  # the patient alone, without padding
        patient_loss(model, x[p : p + 1, :k], y[p : p + 1, :k], mask[p : p + 1, :k], weights,
                     (side[p : p + 1, :k], given[p : p + 1, :k])).backward()
        for got, param in zip(batched, model.parameters()):
            torch.testing.assert_close(got[p], param.grad, rtol=1e-7, atol=1e-10)


def test_a_patient_with_five_seizures_is_clipped_as_one_unit():
    config = ClassifierConfig(temporal="tconv", **SMALL)
    model = build_classifier(config, seed=0).double()
    rng = np.random.default_rng(0)
    seizures = tuple(Seizure(rng.normal(size=(10, config.input_dim)).astype(np.float32) * 5, 1) for _ in range(5))
    x, y, m = make_batch([Patient("p", seizures)], 4, train=False, gamma=2.0, rng=rng)
    x = x.double()
    per_patient = PerPatientGradients(model).compute(lambda mod: patient_loss(mod, x, y, m.double(), None), 1)
    assert per_patient[0].shape[0] == 1  # one gradient for the patient, not five
    clip = 0.01
    noisy, norms = clip_and_noise(per_patient, clipping_norm=clip, noise_multiplier=0.0, expected_batch_size=1.0)
    total = torch.sqrt(sum((g**2).sum() for g in noisy))
    assert norms[0] > 5 * clip  # the clip binds
    assert total == pytest.approx(clip, rel=1e-4)  # the whole patient contributes C, not 5C
    # The same five seizures as five one-seizure patients would contribute up to 5C.
    per_seizure = PerPatientGradients(model).compute(lambda mod: patient_loss(mod, x.reshape(5, 1, *x.shape[2:]),
                                                     y.reshape(5, 1), m.double().reshape(5, 1), None), 5)
    separate, _ = clip_and_noise(per_seizure, clipping_norm=clip, noise_multiplier=0.0, expected_batch_size=1.0)
    assert torch.sqrt(sum((g**2).sum() for g in separate)) > 2 * clip


def test_a_patient_whose_gradient_overflows_adds_nothing_and_spoils_nobody_elses():
    """A coordinator's weights overflow one patient's logits: were its inf/NaN gradient summed, the whole update would
    be NaN exactly when that patient is sampled (and the site's refusal to release NaN would say so)."""
    config = ClassifierConfig(temporal="attn", **SMALL)
    model = build_classifier(config, seed=0)
    with torch.no_grad():
        model.head.weight.fill_(3e38)  # finite float32 weights, as a coordinator may send them
    rng = np.random.default_rng(0)
    quiet = [Patient(f"p{i}", (Seizure(rng.normal(size=(8, config.input_dim)).astype(np.float32) * 1e-3, i % 2),))
             for i in range(2)]
    loud = Patient("loud", (Seizure(np.full((8, config.input_dim), 1e3, np.float32), 1),))
    x, y, m = make_batch(quiet + [loud], 4, train=False, gamma=2.0, rng=rng)
    per_patient = PerPatientGradients(model).compute(lambda mod: patient_loss(mod, x, y, m, None), 3)
    assert not all(torch.isfinite(g[2]).all() for g in per_patient)  # the attack works on the loud patient
    noisy, norms = clip_and_noise(per_patient, clipping_norm=1.0, noise_multiplier=0.0, expected_batch_size=3.0)
    assert all(torch.isfinite(g).all() for g in noisy)
    without, _ = clip_and_noise([g[:2] for g in per_patient], clipping_norm=1.0, noise_multiplier=0.0,
                                expected_batch_size=3.0)
    assert all(torch.equal(a, b) for a, b in zip(noisy, without))  # the others' clipped sum, untouched
    assert torch.isfinite(norms[:2]).all()


def test_noise_has_the_stated_scale():
    zeros = [torch.zeros(0, 200, 100)]
    noisy, _ = clip_and_noise(zeros, clipping_norm=2.0, noise_multiplier=1.5, expected_batch_size=4.0,
                              generator=torch.Generator().manual_seed(0))
    assert float(noisy[0].std()) == pytest.approx(1.5 * 2.0 / 4.0, rel=0.03)


def test_dp_trainer_reports_every_step_with_sigma_and_q():
    config = ClassifierConfig(temporal="attn", **SMALL)
    rng = np.random.default_rng(0)
    patients = [Patient(f"p{i}", tuple(Seizure(rng.normal(size=(8, config.input_dim)).astype(np.float32), i % 2)
                                       for _ in range(1 + i % 3))) for i in range(10)]
    steps = []
    trainer = Trainer(build_classifier(config, seed=0), TrainConfig(epochs=2, batch_patients=3, noise_multiplier=1.1),
                      n_segments=4)
    taken = trainer.fit(patients, on_step=lambda **kw: steps.append(kw))
    assert taken == len(steps) == 2 * 3
    assert all(s == {"noise_multiplier": 1.1, "sample_rate": 0.3} for s in steps)


def test_site_train_writes_a_checkpoint_with_privacy_metadata(tmp_path):
    site = init_site(tmp_path / "site", "s1", PrivacyPolicy(max_epsilon=10.0))
    populate(site.layout.records_dir, n_patients=10, dim=16, n_snippets=12)
    result = train_site(site.layout.root, LocalTrainingOptions(
        epochs=2, batch_patients=3, noise_multiplier=1.5, temporal="tconv", hidden=8, embed_dim=8, n_segments=4,
        run_name="r1"))
    assert 0 < result.epsilon_spent < 10.0
    meta = json.loads((result.checkpoint / "model.json").read_text())
    assert meta["privacy"]["privacy_unit"] == "patient" and meta["privacy"]["dp"] is True
    assert meta["privacy"]["steps"] == result.steps and meta["n_patients"]["test"] >= 1
    assert set(meta["metrics"]["test"]) >= {"accuracy", "balanced_accuracy", "f1_macro", "auroc", "ece", "confusion_matrix"}
    assert load_checkpoint(result.checkpoint).config.stcnn_dim == 16


def test_balanced_weights_from_private_counts_are_refused_under_dp():
    with pytest.raises(SemiofedError, match="DP-SGD does not cover"):
        LocalTrainingOptions(class_weights="balanced")
    LocalTrainingOptions(class_weights="balanced", dp=False)


def _sampled_batches(seed: int) -> list[tuple[str, ...]]:
    config = ClassifierConfig(temporal="linear", **SMALL)
    rng = np.random.default_rng(0)
    patients = [Patient(f"p{i}", (Seizure(rng.normal(size=(8, config.input_dim)).astype(np.float32), i % 2),))
                for i in range(40)]
    trainer = Trainer(build_classifier(config, seed=0), TrainConfig(epochs=1, batch_patients=8, noise_multiplier=1.0,
                                                                    seed=seed), n_segments=4)
    drawn: list[tuple[str, ...]] = []
    real_step = trainer.dp_step
    trainer.dp_step = lambda batch, **kw: (drawn.append(tuple(p.pseudonym for p in batch)), real_step(batch, **kw))[1]
    trainer.fit(patients)
    trainer.close()
    return drawn


def test_who_is_sampled_cannot_be_recomputed_from_the_run_config():
    # The accountant credits Poisson subsampling: it holds only while the sampled batches are secret. Two runs
    # with the very same config (seed included) must draw different patients.
    first, second = _sampled_batches(seed=7), _sampled_batches(seed=7)
    assert len(first) == len(second) == 5
    assert first != second


def _trained_at_q_one(seed: int, *, noise_seed: int | None = None) -> list[torch.Tensor]:
    """A DP training in which every patient is in every step (q = 1) and every seizure has exactly n_segments
    snippets (so the segment jitter has nothing to choose): the sample and the jitter are then fixed, and the only
    randomness left is the Gaussian noise. `noise_seed` forces the trainer's noise generator (the control)."""
    config = ClassifierConfig(temporal="attn", **SMALL)
    data = np.random.default_rng(0)
    patients = [Patient(f"p{i}", tuple(Seizure(data.normal(size=(SMALL["n_segments"], config.input_dim)).astype(np.float32),
                                               i % 2) for _ in range(1 + i % 2))) for i in range(6)]
    train = TrainConfig(epochs=3, batch_patients=8, noise_multiplier=1.0, seed=seed)
    assert train.sample_rate(len(patients)) == 1.0
    model = build_classifier(config, seed=seed)
    trainer = Trainer(model, train, n_segments=SMALL["n_segments"])
    if noise_seed is not None:
        trainer.noise = torch.Generator().manual_seed(noise_seed)
    batches: list[int] = []
    real_step = trainer.dp_step
    trainer.dp_step = lambda batch, **kw: (batches.append(len(batch)), real_step(batch, **kw))[1]
    assert trainer.fit(patients) == 3
    trainer.close()
    assert batches == [len(patients)] * 3  # q = 1: nothing about the sample is secret, only the noise protects
    return [p.detach().clone() for p in model.parameters()]


def test_the_noise_cannot_be_recomputed_from_the_run_config():
    """At q = 1 the sample hides nothing, so the noise is the whole guarantee: a coordinator that knows the config
    (seed included) and the initial weights must not be able to replay the noise and subtract it from the update."""
    first, second = _trained_at_q_one(seed=7), _trained_at_q_one(seed=7)
    moved = max(float((a - b).abs().max()) for a, b in zip(first, second))
    assert moved > 1e-4, "two trainings with the same config drew the same noise"
    # control: the same two trainings with the noise generator forced to one seed are bit-identical, so what
    # differed above is the noise (not the sample, the jitter, the initial weights or the arithmetic)
    forced = [_trained_at_q_one(seed=7, noise_seed=123), _trained_at_q_one(seed=7, noise_seed=123)]
    assert all(torch.equal(a, b) for a, b in zip(*forced))
    # and the config's seed is not the noise's seed: the trainer's noise is not what a generator seeded by it draws
    replayed = _trained_at_q_one(seed=7, noise_seed=7)
    assert all(not torch.equal(a, b) for a, b in zip(first, replayed))


def test_the_optimiser_is_a_choice_and_an_unknown_one_is_refused_with_the_valid_ones():
    with pytest.raises(SemiofedError, match="adam, sgd"):
        TrainConfig(optimizer="rmsprop")
    config = ClassifierConfig(temporal="gru", **SMALL)
    trainer = Trainer(build_classifier(config, seed=0), TrainConfig(optimizer="sgd", noise_multiplier=1.0), n_segments=4)
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer.optimizer.defaults["momentum"] == 0.9
    trainer.close()


def _side_patients(rng: np.random.Generator, config: ClassifierConfig, n: int, *, labelled: bool) -> list[Patient]:
    """Patients whose seizures' side stream leans to their side (the arm difference), label and keypoints random."""
    from semiofed.common.records.side import SIDE_DIM

    patients = []
    for i in range(n):
        side = int(rng.integers(0, 2))
        x = rng.normal(size=(12, config.input_dim)).astype(np.float32) * 0.5
        x[:, -SIDE_DIM] += 0.8 if side == 1 else -0.8  # the side stream is last; its first column: the arms
        patients.append(Patient(f"p{i}", (Seizure(x, int(rng.integers(0, 2)), f"r{i}", side if labelled else -1),)))
    return patients


def test_the_side_output_learns_the_side_from_side_labels_under_patient_level_dp():
    config = ClassifierConfig(streams=("keypoints", "side"), temporal="linear", descriptors=("arm_energy_strong",),
                              stcnn_dim=0, n_segments=4)
    model = build_classifier(config, seed=0)
    rng = np.random.default_rng(0)
    train = _side_patients(rng, config, 60, labelled=True)
    trainer = Trainer(model, TrainConfig(epochs=20, batch_patients=60, lr=0.05, dp=True, noise_multiplier=1.0,
                                         seed=0), n_segments=4)
    trainer.fit(train)
    trainer.close()
    test = _side_patients(rng, config, 200, labelled=True)
    with torch.no_grad():
        logits = torch.stack([model.side_logits(torch.from_numpy(p.seizures[0].inputs))[0] for p in test])
    sides = np.array([p.seizures[0].side for p in test])
    assert np.mean((logits.numpy() > 0) == (sides == 1)) > 0.9


def test_seizures_without_a_side_label_leave_the_side_output_alone():
    config = ClassifierConfig(streams=("keypoints", "side"), temporal="linear", descriptors=("arm_energy_strong",),
                              stcnn_dim=0, n_segments=4)
    model = build_classifier(config, seed=0)
    trainer = Trainer(model, TrainConfig(epochs=5, batch_patients=10, lr=0.05, dp=False, seed=0), n_segments=4)
    trainer.fit(_side_patients(np.random.default_rng(1), config, 20, labelled=False))
    trainer.close()
    assert torch.count_nonzero(model.side.weight) == 0  # no label, no gradient: the side output names no side
    assert torch.count_nonzero(model.head.weight) > 0  # while the decision did train


def test_a_patient_s_side_label_is_clipped_with_their_decision_gradient_as_one_vector():
    """A record whose side stream is enormous (a patient's side label then dominates their gradient) still adds at
    most C in all: the side output has no separate, unclipped channel."""
    from semiofed.common.learning.trainer import side_targets
    from semiofed.common.records.side import SIDE_DIM

    config = ClassifierConfig(streams=("keypoints", "side"), temporal="linear", descriptors=("arm_energy_strong",),
                              stcnn_dim=0, n_segments=4)
    model = build_classifier(config, seed=0).double()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, config.input_dim)).astype(np.float32)
    x[:, -SIDE_DIM:] = 1e4
    patients = [Patient("loud", (Seizure(x, 1, "r", 0),))]
    xb, y, m = make_batch(patients, 4, train=False, gamma=2.0, rng=rng)
    side = side_targets(patients)
    per = PerPatientGradients(model).compute(lambda mod: patient_loss(mod, xb.double(), y, m.double(), None, side), 1)
    side_index = [i for i, (name, _) in enumerate(model.named_parameters()) if name == "side.weight"][0]
    assert per[side_index].abs().max() > 100  # the side label does reach the gradient, hugely
    noisy, norms = clip_and_noise(per, clipping_norm=1.0, noise_multiplier=0.0, expected_batch_size=1.0)
    assert norms[0] > 100 and float(torch.sqrt(sum((g**2).sum() for g in noisy))) == pytest.approx(1.0, rel=1e-6)
