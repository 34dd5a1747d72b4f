"""The STCNN streams on phantom videos through the real `site prepare`: the motion stream carries the seizure,
the raw feature the scene."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from semiofed.common.constants import STCNN_INPUT_PATIENT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_stcnn_motion import build_cohort, probe_cohort  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_stcnn_motion_stream_predicts_the_seizure_type_better_than_the_camera_view(
        tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMIOFED_MODEL_DIR", str(model_dir))
    # 30 phantom patients of 3 hospitals (one 12-16 s clip each, 4 camera views), pose + I3D as `site prepare` does
    (sites,) = build_cohort(tmp_path, patients=30, seed=2718, inputs=(STCNN_INPUT_PATIENT,)).values()
    result = probe_cohort(sites, ("stcnn", "stcnn_motion"))
    motion, raw = result["stcnn_motion"], result["stcnn"]
    # balanced accuracy over chance: (BA - chance) / (1 - chance), so 2 seizure types and 4 views compare
    lift = {name: {t: (r[t]["balanced_accuracy"] - r[t]["chance"]) / (1 - r[t]["chance"]) for t in r}
            for name, r in result.items()}
    print({name: {t: round(v["balanced_accuracy"], 3) for t, v in r.items()} for name, r in result.items()})
    assert motion["label"]["balanced_accuracy"] >= 0.7, result
    assert lift["stcnn_motion"]["label"] > lift["stcnn_motion"]["view"] + 0.2, result
    # the raw feature is the scene: it tells the camera view better than the motion stream does
    assert raw["view"]["balanced_accuracy"] > motion["view"]["balanced_accuracy"] + 0.2, result
