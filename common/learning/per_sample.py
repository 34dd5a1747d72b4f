"""Exact per-patient gradients for models whose trainable parameters all live in nn.Linear.

The batch is laid out patient-major, `[P, K, ...]` (P patients, K seizure
slots each), and every Linear sees an input whose leading dimension is a
multiple of P in that order. A Linear's weight gradient is
`sum over uses and positions of  dL/dout (x) input`; grouping the positions by
patient gives each patient's gradient summed over all of their seizures, in
one backward pass plus one batched matmul per layer (Opacus's einsum grad
samplers do the same per sample; here the sample is the patient).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from semiofed.common.errors import SemiofedError


class PerPatientGradients:
    """Captures Linear inputs/outputs during a forward pass and returns per-patient gradients."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._linears: list[nn.Linear] = [m for m in model.modules() if isinstance(m, nn.Linear)]
        covered = {id(p) for m in self._linears for p in m.parameters(recurse=False)}
        stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if stray:
            raise SemiofedError(
                f"parameters {stray} are not in an nn.Linear, so their per-patient gradients cannot be computed",
                "build the model from nn.Linear layers (see common/learning/classifier.py) or freeze those parameters",
            )
        self._calls: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._active = False
        self._handles = [m.register_forward_hook(self._hook) for m in self._linears]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self._active:
            self._calls.append((module, inputs[0], output))

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def compute(self, loss_of_model: Callable[[nn.Module], torch.Tensor], n_patients: int) -> list[torch.Tensor]:
        """Per-patient gradients `[P, *param.shape]`, in `model.parameters()` order (trainable only).

        `loss_of_model(model)` must run the forward pass on the patient-major
        batch and return the loss summed over all patients.
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._calls = []
        self._active = True
        try:
            loss = loss_of_model(self.model)
        finally:
            self._active = False
        calls, self._calls = self._calls, []
        outputs = [out for _, _, out in calls]
        backprops = torch.autograd.grad(loss, outputs, allow_unused=True) if outputs else []
        grouped: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        modules: dict[int, nn.Linear] = {}
        p = n_patients
        for (module, inp, _), grad_out in zip(calls, backprops):
            if grad_out is None:
                continue
            if inp.shape[0] % p:
                raise SemiofedError(
                    f"a Linear input of shape {tuple(inp.shape)} does not lead with the {p} patients",
                    "keep the patient as the leading batch dimension throughout the model",
                )
            grouped[id(module)].append((inp.reshape(p, -1, inp.shape[-1]), grad_out.reshape(p, -1, grad_out.shape[-1])))
            modules[id(module)] = module
        per_param: dict[int, torch.Tensor] = {}
        for key, pairs in grouped.items():
            module = modules[key]
            acts = torch.cat([a for a, _ in pairs], dim=1).detach()
            grads = torch.cat([g for _, g in pairs], dim=1)
            per_param[id(module.weight)] = torch.bmm(grads.transpose(1, 2), acts)
            if module.bias is not None:
                per_param[id(module.bias)] = grads.sum(dim=1)
        return [per_param.get(id(q), q.new_zeros(p, *q.shape)) for q in params]


def clip_and_noise(
    per_patient: list[torch.Tensor],
    *,
    clipping_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The DP-SGD gradient: clip each patient's whole gradient to C, sum, add N(0, (sigma C)^2), divide by E[batch].

    A patient whose gradient is not finite (weights chosen so that this patient's logits overflow) contributes
    nothing, which is within the clipping bound: let through, it would turn the whole noisy sum into NaN exactly when
    that patient is sampled, and the site's refusal to release NaN would tell who was.

    Returns the noisy gradients and the per-patient norms before clipping.
    """
    if not per_patient:
        return [], torch.zeros(0)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_patient], dim=0).norm(dim=0)
    finite = torch.isfinite(norms)
    factor = torch.where(finite, (clipping_norm / (norms + 1e-6)).clamp(max=1.0), torch.zeros_like(norms))
    noisy = []
    for g in per_patient:
        g = torch.where(finite.view(-1, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))  # 0 * NaN would stay NaN
        summed = torch.einsum("p,p...->...", factor, g)
        noise = torch.normal(0.0, noise_multiplier * clipping_norm, size=summed.shape, generator=generator, dtype=summed.dtype)
        noisy.append((summed + noise) / expected_batch_size)
    return noisy, norms
