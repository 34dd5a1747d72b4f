"""Calibration: temperature scaling (Guo et al. 2017) on validation logits, and scale-and-shift on public reference seizures."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from semiofed.common.errors import SemiofedError


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T); 1.0 if there is nothing to fit."""
    if len(labels) == 0:
        return 1.0
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    # Bounded so that a degenerate validation set cannot make confidences absurd.
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))



def fit_scale_and_shift(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> tuple[float, np.ndarray]:
    """Platt-style vector scaling: (a in [0.05, 20], per-class shift c) minimising the NLL of softmax(a * logits + c).

    The scale is bounded inside the fit (not clipped after it), so that a separable reference, whose likelihood
    grows without bound with the scale, still gets the shift that goes with the scale actually used.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    low, high = 0.05, 20.0
    u = torch.full((1,), float(np.log((1.0 - low) / (high - 1.0))), dtype=torch.float64, requires_grad=True)  # a = 1
    shift = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([u, shift], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def scale() -> torch.Tensor:
        return low + (high - low) * torch.sigmoid(u)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z * scale() + shift, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    c = shift.detach().numpy()
    return float(scale().item()), (c - c.mean()).astype(np.float64)


@torch.no_grad()
def calibrate_on_reference(model: torch.nn.Module, logits: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Fold a scale and per-class shift fitted on PUBLIC reference seizures into the model's linear head.

    `logits` are the model's seizure logits on the reference seizures. The seizure logits are the mean of the
    head's per-snippet outputs, so scaling the head and shifting its bias scales and shifts them exactly (the
    ranking is unchanged). Fitted on public data (phantom seizures run through `site prepare`), this is
    post-processing of a released model and costs no privacy; it sets the decision threshold that DP noise on
    the output bias otherwise leaves anywhere (docs/privacy.md).
    """
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        raise SemiofedError(f"{len(labels)} reference seizures do not cover every class",
                            "give public reference seizures of every label")
    scale, shift = fit_scale_and_shift(logits, labels)
    head = model.head
    head.weight.mul_(scale)
    head.bias.mul_(scale).add_(torch.as_tensor(shift, dtype=head.bias.dtype))
    return {"scale": scale, "shift": [float(x) for x in shift], "reference_seizures": int(len(labels))}
