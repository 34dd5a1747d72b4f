"""A model's weights as the arrays that leave a site: get, set, and the one hash that names a released update.

`update_sha256` is the only definition of a DP release's `update_sha256` in the
ledger (docs/privacy.md): sha256 over, for each array in state_dict order, the
text of its shape tuple then its float32 bytes (C order). An auditor recomputes
it from the arrays a coordinator received or from a checkpoint's weights.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from semiofed.common.errors import SemiofedError


def get_weights(model: torch.nn.Module) -> list[np.ndarray]:
    """The model's state as float32 arrays, in state_dict order."""
    return [v.detach().cpu().numpy().astype(np.float32, copy=True) for v in model.state_dict().values()]


def set_weights(model: torch.nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays in state_dict order, checking count and shapes."""
    keys = list(model.state_dict())
    if len(weights) != len(keys):
        raise SemiofedError(f"received {len(weights)} weight arrays, the model has {len(keys)}",
                            "the coordinator and this site run different model shapes: check the run config")
    state = {}
    for key, array, current in zip(keys, weights, model.state_dict().values()):
        if tuple(array.shape) != tuple(current.shape):
            raise SemiofedError(f"weight {key} has shape {tuple(array.shape)}, expected {tuple(current.shape)}",
                                "the coordinator and this site run different model shapes: check the run config")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    model.load_state_dict(state, strict=True)


def update_sha256(weights: Sequence[np.ndarray]) -> str:
    """The hash naming a released update: shapes and float32 bytes of the arrays, in order."""
    h = hashlib.sha256()
    for w in weights:
        h.update(str(tuple(w.shape)).encode())
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()


def model_update_sha256(model: torch.nn.Module) -> str:
    """`update_sha256` of a model's current weights."""
    return update_sha256(get_weights(model))


__all__ = ["get_weights", "set_weights", "update_sha256", "model_update_sha256"]
