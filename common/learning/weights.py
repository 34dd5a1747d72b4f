"""A model's weights as the arrays that leave a site: get, set, their wire form, and the one hash that names a
released update.

The wire form is what a Flower message carries between the coordinator and a site: one flat float32 vector, the
state_dict's arrays in order, each in C order. Flower sends every array of a message as objects of its own (an
array and its chunks), each fetched in a request of its own through the gateway and the SuperLink's state; one
vector makes a train message 6 objects, where the GRU model's 6 arrays made it 16 (docs/benchmarks.md,
"Federation: seconds per round with the site worker"). Both ends know the shapes from the run config.

`update_sha256` is the only definition of a DP release's `update_sha256` in the
ledger (docs/privacy.md): sha256 over, for each array in state_dict order, the
text of its shape tuple then its float32 bytes (C order). An auditor recomputes
it from a checkpoint's weights or from the vector a coordinator received, split by `from_wire`.
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
        if not np.isfinite(array).all():  # refused whatever the site's patients: the refusal says nothing of them
            raise SemiofedError(f"weight {key} holds NaN or infinite values",
                                "the coordinator sent a broken model: ask it to restart the run from a good checkpoint")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    model.load_state_dict(state, strict=True)


def weight_shapes(model: torch.nn.Module) -> tuple[tuple[int, ...], ...]:
    """The shapes of the model's arrays, in state_dict order."""
    return tuple(tuple(v.shape) for v in model.state_dict().values())


def to_wire(weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The wire form of per-array weights: a list holding one flat float32 vector."""
    return [np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in weights])]


def from_wire(arrays: Sequence[np.ndarray], shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per-array weights of the given shapes from their wire form (one flat vector), checking its size."""
    size = sum(int(np.prod(shape)) for shape in shapes)
    if len(arrays) != 1 or np.asarray(arrays[0]).ndim != 1:
        raise SemiofedError(f"received {len(arrays)} weight arrays, expected one flat vector of {size} values",
                            "the coordinator and this site run different semiofed versions: install the same version")
    flat = np.asarray(arrays[0], dtype=np.float32)
    if flat.size != size:
        raise SemiofedError(f"received {flat.size} weight values, the model has {size}",
                            "the coordinator and this site run different model shapes: check the run config")
    out, at = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[at:at + n].reshape(tuple(shape)).copy())
        at += n
    return out


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


__all__ = ["get_weights", "set_weights", "weight_shapes", "to_wire", "from_wire", "update_sha256", "model_update_sha256"]
