"""The public initial model: trained on public reference seizures only, it is what a federated run starts from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dp_synthetic import populate
from semiofed.cli import main as cli_main
from semiofed.client.site import init_site
from semiofed.client.training.local import group_patients, load_site_records
from semiofed.common.errors import SemiofedError
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.learning.checkpoint import WEIGHTS_FILE, load_checkpoint
from semiofed.common.learning.classifier import classifier_config
from semiofed.common.learning.metrics import classification_report, softmax
from semiofed.common.learning.public_model import public_patients, train_public_model
from semiofed.common.learning.trainer import predict_logits
from semiofed.common.learning.weights import get_weights
from semiofed.server.federation.server_app import initial_weights

FED = FederationConfig()


@pytest.fixture(scope="module")
def app():
    cli_main._register()
    return cli_main.app


def _store(root, name: str, seed: int, n_patients: int = 16, public: bool = True):
    site = init_site(root / name, name, public_reference=public)
    populate(site.layout.records_dir, n_patients=n_patients, seizures=(1,), dim=16, n_snippets=12, seed=seed)
    return site


def _seizures(site):
    labels, streams = FED.model_spec.labels, FED.model_spec.streams
    return [s for p in group_patients(load_site_records(site, labels), labels, streams) for s in p.seizures]


def _train(seizures, seed=0):
    return train_public_model(public_patients(seizures), classifier_config(FED), lr=FED.lr, optimizer=FED.optimizer,
                              batch_patients=FED.batch_patients, seed=seed)


def test_the_public_model_separates_unseen_seizures(tmp_path):
    public, unseen = _seizures(_store(tmp_path, "reference", seed=1)), _seizures(_store(tmp_path, "hospital", seed=2, public=False))
    model = _train(public)
    report = classification_report([s.label for s in unseen],
                                   softmax(predict_logits(model, unseen, n_segments=FED.n_segments)))
    assert report["auroc"] > 0.95 and report["balanced_accuracy"] > 0.8, report
    # ... which the same architecture's random initial weights do not (the run's start without it)
    fresh = classifier_config(FED)
    from semiofed.common.learning.classifier import build_classifier

    untrained = classification_report([s.label for s in unseen], softmax(predict_logits(
        build_classifier(fresh, seed=0), unseen, n_segments=FED.n_segments)))
    assert untrained["balanced_accuracy"] < 0.7


def test_a_public_reference_without_every_label_is_refused(tmp_path):
    seizures = [s for s in _seizures(_store(tmp_path, "reference", seed=1)) if s.label == 0]
    with pytest.raises(SemiofedError, match="no TCS seizure"):
        _train(seizures)


def test_a_reference_of_another_width_is_refused(tmp_path):
    seizures = _seizures(_store(tmp_path, "reference", seed=1))
    narrow = [type(s)(s.inputs[:, :5], s.label, s.record_id) for s in seizures]
    with pytest.raises(SemiofedError, match="inputs are \\[5\\] wide"):
        _train(narrow)


def test_coordinator_public_model_is_the_runs_initial_weights(tmp_path, app):
    reference = _store(tmp_path, "reference", seed=1)
    result = CliRunner().invoke(app, ["coordinator", "public-model", "--dir", str(tmp_path / "coord"),
                                      "--reference", str(reference.layout.root), "--format", "json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["seizures"] == 16
    checkpoint = load_checkpoint(made["checkpoint"])
    assert "no DP, no site data" in checkpoint.meta["trained"]
    start = initial_weights(FederationConfig(resume_from=made["checkpoint"]))
    assert all(np.array_equal(a, b) for a, b in zip(start, get_weights(checkpoint.model)))
    assert not all(np.array_equal(a, b) for a, b in zip(start, initial_weights(FED)))  # not the random start


def test_coordinator_run_refuses_a_bad_initial_model_before_anything_starts(tmp_path, app):
    reference = _store(tmp_path, "reference", seed=1)
    coord = tmp_path / "coord"
    made = json.loads(CliRunner().invoke(app, ["coordinator", "public-model", "--dir", str(coord), "--reference",
                                               str(reference.layout.root), "--format", "json"]).stdout)
    both = CliRunner().invoke(app, ["coordinator", "run", "--dir", str(coord), "--resume",
                                    "--initial-model", made["checkpoint"]])
    assert both.exit_code == 1 and "give one of them" in both.stderr and both.stderr.count("\n") == 1
    weights = tmp_path / "coord" / "public-model" / WEIGHTS_FILE
    data = weights.read_bytes()  # a changed model is not what was trained (bits flipped: zeroing may change nothing)
    weights.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    tampered = CliRunner().invoke(app, ["coordinator", "run", "--dir", str(coord), "--initial-model", made["checkpoint"]])
    assert tampered.exit_code == 1 and "corrupt or were changed" in tampered.stderr
    other = CliRunner().invoke(app, ["coordinator", "public-model", "--dir", str(tmp_path / "gru"), "--reference",
                                     str(reference.layout.root), "--temporal", "gru", "--format", "json"])
    assert other.exit_code == 0, other.output
    shape = CliRunner().invoke(app, ["coordinator", "run", "--dir", str(coord), "--initial-model",
                                     json.loads(other.stdout)["checkpoint"]])  # the run trains the linear default
    assert shape.exit_code == 1 and "not the shape this run trains" in shape.stderr and shape.stderr.count("\n") == 1
    missing = CliRunner().invoke(app, ["coordinator", "public-model", "--dir", str(coord),
                                       "--reference", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "not a site store" in missing.stderr


def test_a_hospitals_own_store_is_never_made_a_public_model(tmp_path, app):
    """An operator who points --reference at a hospital's store (same layout, real patients) is refused: the model would
    leave without DP. Nothing is written."""
    hospital = _store(tmp_path, "hospital", seed=2, public=False)
    result = CliRunner().invoke(app, ["coordinator", "public-model", "--dir", str(tmp_path / "coord"),
                                      "--reference", str(hospital.layout.root)])
    assert result.exit_code == 1 and "not marked as a public reference" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "coord" / "public-model").exists()
    # the mark comes only from `site init --public-reference`: a hand-edited site.json with a non-true value is no mark
    info = json.loads(hospital.layout.site_file.read_text())
    hospital.layout.site_file.write_text(json.dumps(info | {"public_reference": "yes"}))
    again = CliRunner().invoke(app, ["coordinator", "public-model", "--dir", str(tmp_path / "coord"),
                                     "--reference", str(hospital.layout.root)])
    assert again.exit_code == 1 and "not marked as a public reference" in again.stderr
    made = CliRunner().invoke(app, ["site", "init", "--site-dir", str(tmp_path / "ref"), "--site-id", "ref",
                                    "--public-reference", "--format", "json"])
    assert made.exit_code == 0 and json.loads(made.stdout)["public_reference"] is True


def _sided_public(config, n: int, seed: int, labelled: bool = True):
    """n public seizures whose side stream's arm difference tells the side; its hand-rhythm difference only noise."""
    from semiofed.common.learning.trainer import Seizure
    from semiofed.common.records.features import STREAM_SIDE
    from semiofed.common.records.side import SIDE_FEATURE_NAMES

    rng = np.random.default_rng(seed)
    columns = config.stream_columns(STREAM_SIDE)
    arm = columns.start + SIDE_FEATURE_NAMES.index("arm_energy_left_minus_right")
    hand = columns.start + SIDE_FEATURE_NAMES.index("hand_rhythm_left_minus_right")
    seizures = []
    for i in range(n):
        side = i % 2
        x = (rng.normal(size=(12, config.input_dim)) * 0.3).astype(np.float32)
        x[:, arm] += 0.8 if side == 1 else -0.8
        x[:, hand] = rng.normal(0.0, 0.1) + rng.normal(size=12) * 0.05  # a small offset per seizure, no side in it
        seizures.append(Seizure(x, label=i % 3 % 2, record_id=f"pub{i}", side=side if labelled else -1))
    return seizures, arm, hand


def test_the_public_side_output_is_the_penalised_logistic_fit_and_weighs_a_difference_by_its_evidence():
    import torch

    from semiofed.common.learning.public_model import SIDE_L2
    from semiofed.common.records.features import STREAM_SIDE

    config = classifier_config(FED)
    seizures, arm, hand = _sided_public(config, 10, seed=3)
    model = _train(seizures)
    w = model.side.weight.detach().double()[0].requires_grad_(True)
    columns = config.stream_columns(STREAM_SIDE)
    x = torch.tensor(np.stack([s.inputs[:, columns].mean(axis=0) for s in seizures]), dtype=torch.float64)
    y = torch.tensor([float(s.side) for s in seizures], dtype=torch.float64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + SIDE_L2 * (w**2).sum()
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.abs().max() < 1e-4  # the minimum of the convex objective: one answer, whatever the seed
    weights = w.detach().numpy()
    arm_w, hand_w = weights[arm - columns.start], weights[hand - columns.start]
    assert arm_w > 1.0 and abs(hand_w) < 0.25 * arm_w, weights  # the noise is not weighted like the evidence
    # seizures without a side label leave the side output at zero: it names no side
    unlabelled, _, _ = _sided_public(config, 10, seed=3, labelled=False)
    assert torch.count_nonzero(_train(unlabelled).side.weight) == 0
