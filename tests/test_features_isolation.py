"""No statistic crosses patients (docs/privacy.md, "What the guarantee does not cover"; README "The model"):
a record's model inputs are a function of that record alone, nothing is fitted on a site's records, and the
model's only normalisation (the STCNN stream's layer norm) has no state and mixes no patients in a batch.

The attack tried: change everything else a site holds (a patient who moves far more, one who does not move, one
with broken tracking, other frame rates and frame sizes, STCNN features ten thousand times larger) and look for
any trace of it in one patient's inputs, or in the code's module state. Per-patient DP-SGD clips one patient's
gradient; an input that depended on other patients would carry them into it unclipped.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_synthetic import make_record
from semiofed.client.site import init_site
from semiofed.client.training.local import group_patients, load_site_records
from semiofed.common.constants import STREAMS
from semiofed.common.learning.classifier import TEMPORAL_MODELS, ClassifierConfig, build_classifier
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.records import features, motion, region_motion, schema, side
from semiofed.common.records import schema as R
from semiofed.common.records.features import record_inputs
from semiofed.common.records.schema import read_record, write_record

DIM = 16
LABELS = ("FOS", "TCS")
TARGET = "p-target"


def _target() -> schema.SeizureRecord:
    return make_record(np.random.default_rng(1), patient=TARGET, index=0, label="TCS", n_snippets=20, dim=DIM)


def _others() -> list[schema.SeizureRecord]:
    """Records as unlike the target as a site's other patients could be (all valid records)."""
    rng = np.random.default_rng(2)
    loud = make_record(rng, patient="p-loud", index=0, label="TCS", n_snippets=30, dim=DIM, signal=25.0, fps=30.0)
    loud = replace(loud, frame_size=(1920, 1080),
                   arrays={**loud.arrays, R.SNIPPET_FEATURES: loud.arrays[R.SNIPPET_FEATURES] * 1e4})
    still = make_record(rng, patient="p-still", index=0, label="FOS", n_snippets=12, dim=DIM, signal=0.0, fps=10.0)
    still = replace(still, frame_size=(480, 640), arrays={**still.arrays, R.SNIPPET_FEATURES: np.full_like(
        still.arrays[R.SNIPPET_FEATURES], 1e-3)})
    lost = make_record(rng, patient="p-lost", index=0, label="FOS", n_snippets=16, dim=DIM, signal=3.0)
    mask = lost.arrays[R.POSE_MASK].copy()
    mask[::3] = False  # tracking lost in a third of the frames
    pose = lost.arrays[R.POSE].copy()
    pose[::3] = 0.0
    lost = replace(lost, arrays={**lost.arrays, R.POSE_MASK: mask, R.POSE: pose})
    return [loud, still, lost]


def _frozen(value, depth: int = 0):
    """A comparable snapshot of a module-level or class-level value (arrays by their bytes)."""
    if depth > 4:
        return repr(value)
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.detach().cpu().numpy().tobytes())
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(k), _frozen(v, depth + 1)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v, depth + 1) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(v) for v in value)))
    return repr(value)


MODULES = (features, motion, region_motion, side, schema)


def _module_state() -> dict[str, object]:
    """Every value the record-processing modules keep between calls: module globals, class attributes, caches."""
    state: dict[str, object] = {}
    for module in MODULES:
        for name, value in vars(module).items():
            if name.startswith("__") or inspect.ismodule(value):
                continue
            key = f"{module.__name__}.{name}"
            if inspect.isclass(value):
                if value.__module__ == module.__name__:
                    state[key] = _frozen({k: v for k, v in vars(value).items()
                                          if not k.startswith("__") and not callable(v)
                                          and not isinstance(v, (property, staticmethod, classmethod))})
            elif callable(value):
                if hasattr(value, "cache_info"):  # a memoised function: what it holds is state too
                    state[key] = ("cache", value.cache_info().currsize)
                if getattr(value, "__defaults__", None):  # mutable defaults keep state between calls
                    state[f"{key}.__defaults__"] = _frozen(value.__defaults__)
            else:
                state[key] = _frozen(value)
    return state


def _alone_in_a_fresh_process(record_dir: Path, out: Path) -> np.ndarray:
    """The target's inputs computed by an interpreter that never saw another record."""
    code = ("import sys, numpy as np\n"
            "from semiofed.common.records.schema import read_record\n"
            "from semiofed.common.records.features import record_inputs\n"
            "from semiofed.common.constants import STREAMS\n"
            "np.save(sys.argv[2], record_inputs(read_record(__import__('pathlib').Path(sys.argv[1])), STREAMS))\n")
    subprocess.run([sys.executable, "-c", code, str(record_dir), str(out)], check=True, timeout=60)
    return np.load(out)


def test_a_records_inputs_are_the_same_alone_and_among_very_different_records(tmp_path):
    target, others = _target(), _others()
    records_dir = tmp_path / "records"
    write_record(records_dir, target)
    alone = _alone_in_a_fresh_process(records_dir / target.record_id, tmp_path / "alone.npy")
    assert alone.shape == (target.n_snippets, alone.shape[1]) and np.isfinite(alone).all()

    before = _module_state()
    # the other records processed first, then the target; then again in another order, stream by stream
    for other in others:
        assert record_inputs(other, STREAMS).shape[0] == other.n_snippets
    after_others = record_inputs(read_record(records_dir / target.record_id), STREAMS)
    np.testing.assert_array_equal(after_others, alone)
    per_stream = []
    for stream in STREAMS:
        for other in reversed(others):
            record_inputs(other, (stream,))
        per_stream.append(record_inputs(target, (stream,)))
    np.testing.assert_array_equal(np.concatenate(per_stream, axis=1), alone)
    # nothing was fitted or remembered on the way: no scaler, cache or default argument changed
    assert _module_state() == before

    # the other records must actually differ from the target in every stream, or the test would prove nothing
    widths = [p.shape[1] for p in per_stream]
    for other in others:
        x = record_inputs(other, STREAMS)
        for stream, block in zip(STREAMS, np.split(x, np.cumsum(widths)[:-1], axis=1)):
            mine = np.split(alone, np.cumsum(widths)[:-1], axis=1)[STREAMS.index(stream)]
            assert not np.allclose(block.mean(axis=0), mine.mean(axis=0)), (other.patient_pseudonym, stream)


def test_a_site_with_other_patients_gives_a_patient_the_same_inputs_as_a_site_of_one(tmp_path):
    """Through the path site training takes (load the site's records, group them by patient)."""
    target = _target()
    crowded = init_site(tmp_path / "crowded", "crowded", PrivacyPolicy(max_epsilon=10.0))
    alone = init_site(tmp_path / "alone", "alone", PrivacyPolicy(max_epsilon=10.0))
    write_record(alone.layout.records_dir, target)
    for record in [*_others()[:2], target]:  # written valid records only (p-lost's zeroed pose is in-memory only)
        write_record(crowded.layout.records_dir, record)

    def target_inputs(site) -> list[np.ndarray]:
        patients = group_patients(load_site_records(site, LABELS), LABELS, STREAMS)
        (patient,) = [p for p in patients if p.pseudonym == TARGET]
        return [s.inputs for s in patient.seizures]

    crowd = target_inputs(crowded)
    assert len(group_patients(load_site_records(crowded, LABELS), LABELS, STREAMS)) == 3
    for a, b in zip(target_inputs(alone), crowd, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("temporal", TEMPORAL_MODELS)
def test_the_models_normalisation_keeps_no_statistic_and_mixes_no_patients(temporal):
    """The raw STCNN stream's layer norm is per snippet and parameter-free: the model has no buffers (no running
    means), and a patient's logits and snippet logits are the same alone and in a batch with others, in training
    mode (where a batch norm would pool the batch) as in evaluation mode."""
    config = ClassifierConfig(streams=STREAMS, temporal=temporal, stcnn_dim=DIM, embed_dim=8, hidden=6, n_segments=4)
    model = build_classifier(config, seed=0)
    # no running statistic: the only buffers are integer column selections (keypoint_read), none is saved or learnt
    assert [n for n, b in model.named_buffers() if b.is_floating_point()] == []
    assert [k for k, _ in model.named_parameters()] == list(model.state_dict())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    idx = features.segment_indices(20, 4, train=False)
    batch = [record_inputs(r, STREAMS)[features.segment_indices(r.n_snippets, 4, train=False)]
             for r in [_target(), *_others()]]
    assert batch[0].shape == record_inputs(_target(), STREAMS)[idx].shape
    x = torch.from_numpy(np.stack(batch))
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            together, together_snippets = model(x)
            alone, alone_snippets = model(x[:1])
        torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together_snippets[:1], alone_snippets, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # a forward pass updated nothing
