"""The classifier: shapes per stream/temporal choice, Opacus compatibility, inputs and checkpoints."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from dp_synthetic import make_record
from semiofed.common.learning.checkpoint import CheckpointError, check_feature_extractor, load_checkpoint, save_checkpoint
from semiofed.common.learning.classifier import TEMPORAL_MODELS, ClassifierConfig, build_classifier
from semiofed.common.learning.trainer import patient_loss
from semiofed.common.errors import SemiofedError
from semiofed.common.records.motion import MOTION_FEATURE_NAMES
from semiofed.common.records.features import (
    KEYPOINT_DIM,
    STCNN_MOTION_DIM,
    feature_extractor_of,
    keypoint_snippet_features,
    record_inputs,
    segment_indices,
    stcnn_motion_features,
)
from semiofed.common.records.schema import SNIPPET_FEATURES
from semiofed.common.learning.per_sample import PerPatientGradients
from semiofed.common.learning.weights import from_wire, get_weights, set_weights, to_wire, weight_shapes

SMALL = dict(stcnn_dim=32, embed_dim=8, hidden=6, n_segments=5)


@pytest.mark.parametrize("temporal", TEMPORAL_MODELS)
@pytest.mark.parametrize("streams", [("stcnn",), ("keypoints",), ("stcnn", "keypoints"), ("keypoints", "stcnn_motion"),
                                     ("regions",), ("keypoints", "regions")])
def test_every_stream_and_temporal_choice_gives_seizure_and_snippet_logits(temporal, streams):
    config = ClassifierConfig(streams=streams, temporal=temporal, **SMALL)
    model = build_classifier(config, seed=0)
    seizure, snippets = model(torch.randn(3, 2, 7, config.input_dim))
    assert seizure.shape == (3, 2, 2) and snippets.shape == (3, 2, 7, 2)
    assert torch.isfinite(seizure).all()


def test_unknown_choices_are_refused_with_the_valid_ones():
    with pytest.raises(SemiofedError, match="blstm"):
        ClassifierConfig(temporal="lstm3")
    with pytest.raises(SemiofedError, match="keypoints"):
        ClassifierConfig(streams=("audio",))


@pytest.mark.parametrize("temporal", TEMPORAL_MODELS)
@pytest.mark.parametrize("streams", [("stcnn", "keypoints"), ("regions",)])
def test_opacus_computes_the_same_per_sample_gradients(temporal, streams):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from opacus import GradSampleModule  # its import calls logging.basicConfig
    root.handlers[:], _ = handlers, root.setLevel(level)

    config = ClassifierConfig(temporal=temporal, streams=streams, **SMALL)
    model = build_classifier(config, seed=1).double()
    x = torch.randn(4, 1, 5, config.input_dim, dtype=torch.double)
    y, mask = torch.tensor([[0], [1], [1], [0]]), torch.ones(4, 1, dtype=torch.double)
    ours = PerPatientGradients(model).compute(lambda m: patient_loss(m, x, y, mask, None), 4)

    wrapped = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    logits, _ = wrapped(x[:, 0])
    torch.nn.functional.cross_entropy(logits, y[:, 0], reduction="sum").backward()
    for mine, param in zip(ours, wrapped.parameters()):
        torch.testing.assert_close(mine, param.grad_sample, rtol=1e-6, atol=1e-9)


def test_segments_cover_the_video_and_jitter_stays_in_its_segment():
    middles = segment_indices(160, 16, train=False)
    assert list(middles) == [5 + 10 * i for i in range(16)]
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = segment_indices(160, 16, train=True, rng=rng)
        assert all(10 * i <= j < 10 * (i + 1) for i, j in enumerate(idx))
    assert segment_indices(3, 16, train=False).max() == 2  # short videos repeat snippets


def test_keypoint_features_are_finite_and_separate_stronger_motion():
    rng = np.random.default_rng(0)
    calm = keypoint_snippet_features(make_record(rng, patient="a", index=0, label="FOS"))
    shaking = keypoint_snippet_features(make_record(rng, patient="b", index=0, label="TCS"))
    assert calm.shape == (20, KEYPOINT_DIM) and np.isfinite(calm).all()
    energy = MOTION_FEATURE_NAMES.index("body_energy")  # log motion energy on a fixed scale: higher is stronger
    assert shaking[:, energy].mean() > calm[:, energy].mean() + 0.3
    assert record_inputs(make_record(rng, patient="c", index=0, label="FOS"), ("stcnn", "keypoints")).shape == (20, 32 + KEYPOINT_DIM)


def _checkpoint(tmp_path):
    config = ClassifierConfig(streams=("stcnn", "keypoints"), **SMALL)
    model = build_classifier(config, seed=0)
    record = make_record(np.random.default_rng(0), patient="a", index=0, label="FOS")
    path = save_checkpoint(tmp_path / "ckpt", model, {"feature_extractor": feature_extractor_of(record), "temperature": 1.5})
    return path, model, record


def test_checkpoint_round_trip_restores_the_same_predictions(tmp_path):
    path, model, record = _checkpoint(tmp_path)
    loaded = load_checkpoint(path)
    x = torch.randn(2, 5, loaded.config.input_dim)
    torch.testing.assert_close(loaded.model(x)[0], model.eval()(x)[0])
    assert loaded.temperature == 1.5
    loaded.check_record(record)


def test_the_wire_form_is_one_flat_vector_that_restores_the_model_exactly():
    """What a Flower message carries: one float32 vector (6 objects a train message, not 4 + 2 per array); both ends
    rebuild the same arrays, and a vector of another size or the per-array form is refused by name."""
    model = build_classifier(ClassifierConfig(**SMALL), seed=3)
    weights = get_weights(model)
    assert len(weights) > 1
    wire = to_wire(weights)
    assert len(wire) == 1 and wire[0].ndim == 1 and wire[0].dtype == np.float32
    assert wire[0].size == sum(w.size for w in weights)
    back = from_wire(wire, weight_shapes(model))
    assert [w.shape for w in back] == [w.shape for w in weights]
    assert all(np.array_equal(a, b) for a, b in zip(back, weights))
    other = build_classifier(ClassifierConfig(**SMALL), seed=4)
    set_weights(other, back)
    x = torch.randn(2, 5, other.config.input_dim)
    torch.testing.assert_close(other.eval()(x)[0], model.eval()(x)[0])
    with pytest.raises(SemiofedError, match="weight values, the model has"):
        from_wire([wire[0][:-1]], weight_shapes(model))
    with pytest.raises(SemiofedError, match="expected one flat vector"):
        from_wire(weights, weight_shapes(model))
    # a coordinator's NaN or infinite weights are refused by name, whichever patients the site holds
    for bad in (np.nan, np.inf):
        broken = [w.copy() for w in weights]
        broken[-1].flat[0] = bad
        with pytest.raises(SemiofedError, match="NaN or infinite"):
            set_weights(other, broken)


def test_corrupt_checkpoint_says_so(tmp_path):
    path, _, _ = _checkpoint(tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_records_from_another_feature_extractor_are_refused(tmp_path):
    path, _, _ = _checkpoint(tmp_path)
    loaded = load_checkpoint(path)
    rng = np.random.default_rng(1)
    other_weights = make_record(rng, patient="b", index=0, label="FOS", sha="0" * 64)
    with pytest.raises(CheckpointError, match="feature extractor"):
        loaded.check_record(other_weights)
    other_dim = make_record(rng, patient="b", index=1, label="FOS", dim=16)
    with pytest.raises(CheckpointError, match="16-d"):
        loaded.check_record(other_dim)
    meta = json.loads((path / "model.json").read_text())
    assert meta["feature_extractor"]["name"] == "i3d" and len(meta["weights_sha256"]) == 64


def test_records_whose_stcnn_saw_the_video_otherwise_are_refused():
    record = make_record(np.random.default_rng(1), patient="b", index=0, label="FOS")
    expected = {**feature_extractor_of(record), "input": "patient-window"}
    record.stcnn_input = "frame-snippet"
    for streams in (("stcnn",), ("keypoints", "stcnn_motion")):
        config = ClassifierConfig(streams=streams, **SMALL)
        with pytest.raises(CheckpointError, match="frame-snippet.*patient-window.*--stcnn-input patient-window"):
            check_feature_extractor(expected, record, config)
    record.stcnn_input = "patient-window"
    check_feature_extractor(expected, record, ClassifierConfig(streams=("stcnn",), **SMALL))
    check_feature_extractor(expected, _with_features(np.zeros((4, 0))), ClassifierConfig(**SMALL))  # keypoints only


def _with_features(features: np.ndarray):
    record = make_record(np.random.default_rng(0), patient="a", index=0, label="FOS", n_snippets=len(features),
                         dim=features.shape[1])
    record.arrays[SNIPPET_FEATURES] = features.astype(np.float32)
    return record


def test_the_stcnn_motion_stream_ignores_a_static_scene_and_measures_change_at_any_feature_scale():
    rng = np.random.default_rng(3)
    scene = np.abs(rng.normal(1.0, 0.3, 64))
    still = _with_features(np.tile(scene, (24, 1)))  # 24 snippets x 8 frames at 15 fps: 12.8 s of a still scene
    moving = np.tile(scene, (24, 1)) + rng.normal(0, 0.2, (24, 64))
    low, high = stcnn_motion_features(still), stcnn_motion_features(_with_features(moving))
    assert low.shape == high.shape == (24, STCNN_MOTION_DIM) and low.dtype == np.float32
    np.testing.assert_allclose(low, -3.0)  # no change: the floor, clipped
    assert (high > low + 1.0).all()
    # a share of the record's own feature size: the STCNN's overall scale (or a brighter room) does not matter
    np.testing.assert_allclose(stcnn_motion_features(_with_features(10 * moving)), high, rtol=1e-5, atol=1e-5)
    # another scene with the same movement gives the same stream: the scene itself cancels
    other = np.tile(np.abs(rng.normal(1.0, 0.3, 64)), (24, 1)) + (moving - np.tile(scene, (24, 1)))
    np.testing.assert_allclose(stcnn_motion_features(_with_features(other)), high, atol=0.15)
    # a jump 10 s in shows from the snippet 2 s later on, and in the first snippets (no past) the first change stands
    jump = np.tile(scene, (24, 1))
    jump[18:] += 1.0
    stream = stcnn_motion_features(_with_features(jump))
    lag = round(2.0 / (8 / 15))
    assert (stream[:18, 0] == -3.0).all() and (stream[18 : 18 + lag, 0] > 0).all() and (stream[18 + lag :, 0] == -3.0).all()
    assert np.isfinite(stcnn_motion_features(_with_features(np.zeros((3, 8))))).all()


def test_a_model_on_the_stcnn_streams_refuses_records_without_stcnn_features():
    record = _with_features(np.zeros((10, 0)))
    assert record_inputs(record, ("keypoints",)).shape == (10, KEYPOINT_DIM)
    for stream in ("stcnn", "stcnn_motion"):
        with pytest.raises(SemiofedError, match=f"no STCNN features, the '{stream}' stream needs them"):
            record_inputs(record, ("keypoints", stream))


def test_the_default_model_reads_only_its_named_descriptors_and_the_validity_column():
    from semiofed.common.learning.classifier import parameter_count
    from semiofed.common.learning.spec import DEFAULT_MODEL, ModelSpec

    config = ClassifierConfig.from_spec(DEFAULT_MODEL, stcnn_dim=1024)
    model = build_classifier(config, seed=0)
    read = [MOTION_FEATURE_NAMES.index(n) for n in DEFAULT_MODEL.descriptors] + [KEYPOINT_DIM - 1]
    x = torch.randn(2, 16, KEYPOINT_DIM)
    before = model(x)[0]
    ignored = torch.ones(KEYPOINT_DIM, dtype=torch.bool)
    ignored[read] = False
    moved = x.clone()
    moved[..., ignored] += 5.0  # every descriptor the model does not read
    assert torch.equal(model(moved)[0], before)
    for column in read:  # each one it reads changes the output
        poked = x.clone()
        poked[..., column] += 5.0
        assert not torch.allclose(model(poked)[0], before), column
    everything = build_classifier(ClassifierConfig.from_spec(ModelSpec(descriptors="all"), stcnn_dim=1024), seed=0)
    assert parameter_count(model) < parameter_count(everything) / 2
    # the selection is not a parameter: it is not in the exchanged weights
    assert "keypoint_read" not in model.state_dict()


def test_descriptor_names_are_checked_and_stored_and_old_configs_read_every_column():
    from semiofed.common.federation.run_config import FederationConfig
    from semiofed.common.learning.spec import ModelSpec

    with pytest.raises(SemiofedError, match="wrist_wobble"):
        ModelSpec(descriptors=("arm_speed_sync", "wrist_wobble"))
    with pytest.raises(SemiofedError, match="repeated"):
        FederationConfig(descriptors="arm_speed_sync,arm_speed_sync")
    fed = FederationConfig(descriptors="arm_speed_sync,head_energy")
    assert FederationConfig.from_run_config(fed.to_run_config()).descriptors == ("arm_speed_sync", "head_energy")
    config = ClassifierConfig.from_spec(fed.model_spec, stcnn_dim=1024)
    assert config.keypoint_read == (MOTION_FEATURE_NAMES.index("arm_speed_sync"), MOTION_FEATURE_NAMES.index("head_energy"),
                                    KEYPOINT_DIM - 1)
    assert ClassifierConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = config.to_dict()
    del old["descriptors"]  # a checkpoint written before the selection: its model read the whole stream
    assert ClassifierConfig.from_dict(old).keypoint_read == tuple(range(KEYPOINT_DIM))
    assert ClassifierConfig.from_dict(old).spec.descriptors == MOTION_FEATURE_NAMES


def test_a_model_of_the_side_stream_alone_is_refused_in_one_line():
    from semiofed.common.errors import SemiofedError

    with pytest.raises(SemiofedError, match="nothing for the seizure decision to read") as info:
        ClassifierConfig(streams=("side",))
    assert "keypoints" in str(info.value) and "\n" not in str(info.value)


def test_the_decision_never_reads_the_side_stream_and_the_side_output_flips_with_it():
    from semiofed.common.records.side import SIDE_DIM

    for temporal in TEMPORAL_MODELS:
        config = ClassifierConfig(streams=("keypoints", "side"), temporal=temporal, stcnn_dim=0, n_segments=4)
        model = build_classifier(config, seed=0)
        with torch.no_grad():
            model.side.weight.normal_()
        x = torch.randn(3, 6, config.input_dim)
        flipped = x.clone()
        flipped[..., -SIDE_DIM:] *= -5.0  # another side stream: mirrored and larger
        torch.testing.assert_close(model(flipped)[0], model(x)[0])  # the FOS/TCS decision does not move
        torch.testing.assert_close(model.side_logits(flipped)[0], -5.0 * model.side_logits(x)[0])  # no intercept
        assert len(config.decision_columns) == config.input_dim - SIDE_DIM
