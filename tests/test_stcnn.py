"""The STCNN snippet encoders: I3D reproduces DeepMind's answers, weights are checked, the CLI self-test works."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from semiofed.common.errors import ModelFileError, SemiofedError
from semiofed.common.models import i3d
from semiofed.common.models.registry import I3D_KINETICS400
from semiofed.common.models.stcnn import kinetics_top_k, load_stcnn

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def encoder(model_dir: Path):
    """The real I3D encoder on the CPU."""
    return load_stcnn("i3d", model_dir, device="cpu")


def _snippets(n: int, t: int = 8, h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 7, 2, (2, 3)), (8, 3, 2, (0, 1)), (56, 3, 1, (1, 1)), (4, 2, 2, (0, 0)), (5, 1, 1, (0, 0))],
)
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert i3d.same_padding(size, kernel, stride) == expected


def test_same_max_pool_puts_the_extra_pad_at_the_end() -> None:
    # [1, 5, 2, 3], window 3 stride 2: TF pads one cell at the end -> [max(1,5,2), max(2,3)];
    # PyTorch's symmetric padding would give [5, 5].
    x = torch.tensor([1.0, 5.0, 2.0, 3.0]).reshape(1, 1, 1, 1, 4)
    out = i3d.MaxPoolSame((1, 1, 3), (1, 1, 2))(x)
    assert out.flatten().tolist() == [5.0, 3.0]


@pytest.mark.parametrize(
    ("clip", "label"),
    [("mmaction2_demo.mp4", "arm wrestling"), ("mmaction2_test_video_structuralize.mp4", "shooting basketball")],
)
def test_i3d_known_answers(encoder, videos_dir: Path, clip: str, label: str) -> None:
    top = kinetics_top_k(encoder, videos_dir / clip, k=5)
    assert len(top) == 5
    assert top[0][0] == label
    assert 0.0 < top[0][1] <= 1.0


def test_selftest_cli_gives_the_known_answer(videos_dir: Path, model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "semiofed.cli", "models", "selftest", str(videos_dir / "mmaction2_tests_test.avi"),
           "--model-dir", str(model_dir), "--format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [row["label"] for row in report["top"]][:1] == ["filling eyebrows"]
    assert len(report["top"]) == 5


def test_selftest_cli_unknown_stcnn_is_one_line(videos_dir: Path, model_dir: Path) -> None:
    exe = shutil.which("semiofed", path=str(Path(sys.executable).parent)) or "semiofed"
    cmd = [exe, "models", "selftest", str(videos_dir / "mmaction2_tests_test.avi"),
           "--model-dir", str(model_dir), "--stcnn", "c3d"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "unknown STCNN 'c3d'" in done.stderr and "i3d, r2plus1d" in done.stderr
    assert "Traceback" not in done.stderr


def test_i3d_preprocess_crops_224_and_scales_to_unit_range(encoder) -> None:
    frames = np.zeros((1, 8, 240, 320, 3), dtype=np.uint8)
    frames[..., 0] = 255
    x = encoder.preprocess(frames)
    assert x.shape == (1, 3, 8, 224, 224)
    torch.testing.assert_close(x[:, 0], torch.ones_like(x[:, 0]))
    torch.testing.assert_close(x[:, 1:], -torch.ones_like(x[:, 1:]))


def test_encode_batches_and_is_deterministic(encoder) -> None:
    snippets = _snippets(2)
    one_by_one = encoder.encode(snippets, batch_size=1)
    batched = encoder.encode(snippets, batch_size=2)
    again = encoder.encode(snippets[:1], batch_size=1)
    assert one_by_one.shape == (2, 1024) and one_by_one.dtype == np.float32
    assert np.isfinite(one_by_one).all()
    assert np.array_equal(again, one_by_one[:1])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-5)
    assert not np.allclose(one_by_one[0], one_by_one[1])
    assert encoder.encode(snippets[:0]).shape == (0, 1024)


def test_encode_window_gives_each_snippet_the_feature_of_its_whole_window(encoder) -> None:
    clip = _snippets(1, t=32)[0]
    window = encoder.encode_window(clip, 4)
    assert window.shape == (4, 1024) and window.dtype == np.float32 and np.isfinite(window).all()
    np.testing.assert_array_equal(window, np.repeat(window[:1], 4, axis=0))  # no dependence on the position
    np.testing.assert_allclose(window[0], encoder.encode(clip[None])[0], rtol=1e-5, atol=1e-6)  # the 32-frame clip
    # context: changing only the first snippet's frames changes what every snippet of the window carries
    changed = clip.copy()
    changed[:8] = 255 - changed[:8]
    assert not np.allclose(encoder.encode_window(changed, 4)[3], window[3], atol=1e-3)
    # and a snippet seen in its window is not the snippet alone (GESTURES' 8-frame clips)
    assert not np.allclose(encoder.encode(clip[8:16][None])[0], window[1], atol=1e-3)
    assert encoder.encode_window(clip[:16], 2).shape == (2, 1024)
    with pytest.raises(ValueError, match="cannot split"):
        encoder.encode_window(clip[:3], 4)


def test_encode_rejects_frames_that_are_not_uint8_rgb(encoder) -> None:
    with pytest.raises(ValueError, match=r"uint8 RGB array \[N, T, H, W, 3\]"):
        encoder.encode(np.zeros((1, 8, 32, 32, 3), dtype=np.float32))


def test_encoder_metadata(encoder) -> None:
    assert (encoder.name, encoder.feature_dim, encoder.snippet_frames) == ("i3d", 1024, 8)
    assert encoder.model_keys == ("i3d_kinetics400_rgb",)
    assert len(encoder.labels()) == 400


def test_corrupted_i3d_file_is_refused_with_the_fix(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / I3D_KINETICS400.relpath
    bad.parent.mkdir(parents=True)
    shutil.copyfile(model_dir / I3D_KINETICS400.relpath, bad)
    with bad.open("r+b") as fh:
        fh.seek(bad.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelFileError, match="semiofed models fetch"):
        load_stcnn("i3d", tmp_path, device="cpu")


def test_i3d_weights_must_match_the_architecture_exactly(model_dir: Path) -> None:
    with np.load(model_dir / I3D_KINETICS400.relpath, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    missing = dict(arrays)
    del missing["batch_stats/Mixed_4d/Branch_2/Conv3d_0b_3x3/BatchNorm_0/var"]
    with pytest.raises(ModelFileError, match="lack the array"):
        i3d.i3d_from_arrays(missing)
    with pytest.raises(ModelFileError, match="does not use"):
        i3d.i3d_from_arrays({**arrays, "params/Extra/Conv_0/kernel": np.zeros(1, np.float32)})
    reshaped = dict(arrays)
    reshaped["params/Logits/Conv3d_0c_1x1/Conv_0/bias"] = np.zeros(399, np.float32)
    with pytest.raises(ModelFileError, match="do not fit"):
        i3d.i3d_from_arrays(reshaped)


def test_unknown_stcnn_lists_the_choices(model_dir: Path) -> None:
    with pytest.raises(SemiofedError, match="use one of: i3d, r2plus1d"):
        load_stcnn("slowfast", model_dir)


def test_r2plus1d_missing_file_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="--include-optional"):
        load_stcnn("r2plus1d", tmp_path, device="cpu")


def test_r2plus1d_random_weights_only_when_asked_and_warned(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        enc = load_stcnn("r2plus1d", tmp_path, device="cpu", allow_random_weights=True)
    assert "RANDOM weights" in caplog.text
    assert (enc.name, enc.feature_dim, enc.model_keys) == ("r2plus1d", 512, ("r2plus1d_18_kinetics400",))
    snippets = _snippets(1, h=90, w=120)
    assert enc.preprocess(snippets).shape == (1, 3, 8, 112, 112)
    features = enc.encode(snippets)
    assert features.shape == (1, 512) and features.dtype == np.float32
    assert enc.classify(snippets).shape == (400,)


def test_fused_inference_i3d_equals_the_exact_port(model_dir) -> None:
    """The fast inference graph (folded BatchNorm, merged 1x1x1 convs) computes the same features and logits."""
    from semiofed.common.models import i3d

    exact = i3d.load_i3d(model_dir)
    fused = i3d.fuse_for_inference(i3d.load_i3d(model_dir))
    x = torch.rand(2, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        a, b = exact.features(x), fused.features(x.contiguous(memory_format=torch.channels_last_3d))
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        assert torch.allclose(exact.logits(x), fused.logits(x), rtol=1e-4, atol=1e-4)
