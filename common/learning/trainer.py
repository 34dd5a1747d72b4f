"""Training and inference loops: patient-level DP-SGD (or plain SGD) over patient-major batches.

Each DP step Poisson-samples patients with rate q, computes each sampled
patient's gradient summed over all of their seizures, clips it as one unit,
adds Gaussian noise and reports (sigma, q) to an accountant. The loop knows
no budget: common/privacy/accountant.py checks and records it.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semiofed.common.constants import OPTIMIZER_SGD, OPTIMIZERS
from semiofed.common.errors import SemiofedError
from semiofed.common.records.features import segment_indices
from semiofed.common.learning.per_sample import PerPatientGradients, clip_and_noise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seizure:
    """One seizure's model input (every snippet) and its label index."""

    inputs: np.ndarray  # [S, D_in] float32
    label: int
    record_id: str = ""
    side: int = -1  # the side of the focal signs where the clinical label gives one: 1 left, 0 right, -1 none


@dataclass(frozen=True)
class Patient:
    """The privacy unit: all seizures of one patient."""

    pseudonym: str
    seizures: tuple[Seizure, ...]


SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters; stored in the checkpoint."""

    epochs: int = 30
    # expected patients per step; q = batch_patients / n_patients
    batch_patients: int = 8
    lr: float = 1e-3
    # "adam", or "sgd" (momentum 0.9): under DP Adam divides every coordinate by its own noisy second moment, so a
    # coordinate the data does not move (the output bias among them) random-walks by ~lr a step (docs/privacy.md)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    dp: bool = True
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    # per-class loss weights; must not be computed from the private data under DP
    class_weights: tuple[float, ...] | None = None
    beta_gamma: float = 2.0  # Beta(gamma, gamma) jitter of the segment positions (GESTURES)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_patients < 1:
            raise SemiofedError(f"epochs ({self.epochs}) and batch_patients ({self.batch_patients}) must be >= 1")
        if not (self.lr > 0 and self.clipping_norm > 0 and self.beta_gamma > 0):
            raise SemiofedError("lr, clipping_norm and beta_gamma must be positive")
        if self.optimizer not in OPTIMIZERS:
            raise SemiofedError(f"optimizer '{self.optimizer}' is unknown", f"use one of {', '.join(OPTIMIZERS)}")
        if self.dp and not self.noise_multiplier > 0:
            raise SemiofedError(f"noise multiplier {self.noise_multiplier} must be positive under DP", "use e.g. 1.0")
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))

    def sample_rate(self, n_patients: int) -> float:
        """Poisson sampling rate of patients."""
        return min(1.0, self.batch_patients / max(n_patients, 1))

    def steps(self, n_patients: int) -> int:
        """Total steps: epochs x (1 / q), as Opacus counts an epoch."""
        return self.epochs * max(1, round(1.0 / self.sample_rate(n_patients)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


class StepHook(Protocol):
    def __call__(self, *, noise_multiplier: float, sample_rate: float) -> None: ...


def balanced_class_weights(labels: Sequence[int], n_classes: int) -> tuple[float, ...]:
    """Inverse-frequency weights (non-private: only for --no-dp or for public label counts)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    w = counts.sum() / (n_classes * counts)
    return tuple(float(x) for x in w)


def make_batch(
    patients: Sequence[Patient], n_segments: int, *, train: bool, gamma: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patient-major tensors: inputs [P, K, n, D], labels [P, K], mask [P, K] (K = most seizures of any patient)."""
    k = max((len(p.seizures) for p in patients), default=0)
    d = patients[0].seizures[0].inputs.shape[1] if patients else 0
    x = np.zeros((len(patients), k, n_segments, d), dtype=np.float32)
    y = np.zeros((len(patients), k), dtype=np.int64)
    m = np.zeros((len(patients), k), dtype=np.float32)
    for i, patient in enumerate(patients):
        for j, seizure in enumerate(patient.seizures):
            idx = segment_indices(seizure.inputs.shape[0], n_segments, train=train, gamma=gamma, rng=rng)
            x[i, j] = seizure.inputs[idx]
            y[i, j] = seizure.label
            m[i, j] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)


def side_targets(patients: Sequence[Patient]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patient-major side labels [P, K] (1 left, 0 right) and where one is given [P, K], laid out as make_batch's."""
    k = max((len(p.seizures) for p in patients), default=0)
    side = np.zeros((len(patients), k), dtype=np.float32)
    given = np.zeros((len(patients), k), dtype=np.float32)
    for i, patient in enumerate(patients):
        for j, seizure in enumerate(patient.seizures):
            if seizure.side in (0, 1):
                side[i, j], given[i, j] = float(seizure.side), 1.0
    return torch.from_numpy(side), torch.from_numpy(given)


def patient_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None,
                 side: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Weighted cross-entropy summed over every seizure of every patient in the batch (padding masked); with `side`
    (side_targets) and a model with the side output, plus the side's logistic loss on the seizures that have one.
    One sum per patient, so one clipping bound covers both outputs."""
    logits, _ = model(x)
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), weight=weights, reduction="none")
    total = (losses * mask.reshape(-1)).sum()
    if side is not None and getattr(model, "side", None) is not None:
        target, given = side
        side_logit, _ = model.side_logits(x)
        side_losses = F.binary_cross_entropy_with_logits(side_logit.reshape(-1), target.reshape(-1).to(side_logit.dtype),
                                                         reduction="none")
        total = total + (side_losses * given.reshape(-1).to(side_logit.dtype)).sum()
    return total


class Trainer:
    """Runs epochs of DP-SGD (per-patient clipping, Poisson sampling) or plain minibatch training."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        n_segments: int,
        proximal: tuple[Sequence[torch.Tensor], float] | None = None,
    ) -> None:
        self.model = model
        # FedProx: (global parameters, mu). The term mu/2 |w - w_global|^2 does not touch the data, so adding its
        # gradient after clipping and noise is post-processing and costs no privacy.
        self.proximal = proximal
        self.config = config
        self.n_segments = n_segments
        if config.optimizer == OPTIMIZER_SGD:
            self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=SGD_MOMENTUM,
                                             weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # Under DP the patient sampling and the noise come from OS entropy, never from the config's seed: the
        # accountant credits subsampling amplification, which holds only while nobody can recompute who was sampled.
        self.rng = np.random.default_rng(secrets.randbits(128) if config.dp else config.seed)
        self.noise = torch.Generator().manual_seed(secrets.randbits(63))
        self.weights = torch.tensor(config.class_weights, dtype=torch.float32) if config.class_weights else None
        self._grads = PerPatientGradients(model) if config.dp else None

    def close(self) -> None:
        """Remove the gradient hooks."""
        if self._grads is not None:
            self._grads.close()

    def _add_proximal(self) -> None:
        if self.proximal is None:
            return
        anchors, mu = self.proximal
        with torch.no_grad():
            for p, anchor in zip((p for p in self.model.parameters() if p.requires_grad), anchors):
                if p.grad is not None:
                    p.grad.add_(p.detach() - anchor, alpha=mu)

    def dp_step(self, batch: Sequence[Patient], *, expected_batch_size: float) -> dict[str, float]:
        """One DP-SGD step on the sampled patients (possibly none: the noise is still added)."""
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if batch:
            x, y, m = make_batch(batch, self.n_segments, train=True, gamma=cfg.beta_gamma, rng=self.rng)
            side = side_targets(batch)
            per_patient = self._grads.compute(lambda model: patient_loss(model, x, y, m, self.weights, side), len(batch))
        else:
            per_patient = [p.new_zeros(0, *p.shape) for p in params]
        noisy, norms = clip_and_noise(per_patient, clipping_norm=cfg.clipping_norm, noise_multiplier=cfg.noise_multiplier,
                                      expected_batch_size=expected_batch_size, generator=self.noise)
        for p, g in zip(params, noisy):
            p.grad = g
        self._add_proximal()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clipped = float((norms > cfg.clipping_norm).float().mean()) if len(norms) else 0.0
        return {"patients": float(len(batch)), "clipped_fraction": clipped}

    def plain_step(self, batch: Sequence[Patient]) -> dict[str, float]:
        """One ordinary (non-private) step: mean loss over the batch's seizures."""
        x, y, m = make_batch(batch, self.n_segments, train=True, gamma=self.config.beta_gamma, rng=self.rng)
        loss = patient_loss(self.model, x, y, m, self.weights, side_targets(batch)) / m.sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._add_proximal()
        self.optimizer.step()
        return {"patients": float(len(batch)), "loss": float(loss.detach())}

    def fit(
        self,
        patients: Sequence[Patient],
        *,
        on_step: StepHook | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        steps: int | None = None,
    ) -> int:
        """Train; under DP calls `on_step(noise_multiplier=, sample_rate=)` after every step. Returns steps taken."""
        cfg = self.config
        n = len(patients)
        if n == 0:
            raise SemiofedError("no training patients", "prepare records first with `semiofed site prepare`")
        self.model.train()
        q = cfg.sample_rate(n)
        total = steps if steps is not None else cfg.steps(n)
        per_epoch = max(1, round(1.0 / q))
        taken = 0
        for epoch in range(math.ceil(total / per_epoch)):
            stats: dict[str, float] = {}
            if cfg.dp:
                for _ in range(min(per_epoch, total - taken)):
                    chosen = np.flatnonzero(self.rng.random(n) < q)
                    stats = self.dp_step([patients[i] for i in chosen], expected_batch_size=q * n)
                    taken += 1
                    if on_step is not None:
                        on_step(noise_multiplier=cfg.noise_multiplier, sample_rate=q)
            else:
                order = self.rng.permutation(n)
                for start in range(0, n, cfg.batch_patients):
                    if taken >= total:
                        break
                    stats = self.plain_step([patients[i] for i in order[start : start + cfg.batch_patients]])
                    taken += 1
            if on_epoch is not None:
                on_epoch(epoch, stats)
            log.debug("epoch %d: %s", epoch, stats)
        return taken


@torch.no_grad()
def predict_logits(model: nn.Module, seizures: Sequence[Seizure], *, n_segments: int | None) -> np.ndarray:
    """Seizure logits [N, C]: the segment middles (n_segments) or every snippet (None)."""
    model.eval()
    out = []
    for seizure in seizures:
        inputs = seizure.inputs
        if n_segments is not None:
            inputs = inputs[segment_indices(inputs.shape[0], n_segments, train=False)]
        logits, _ = model(torch.from_numpy(np.ascontiguousarray(inputs))[None])
        out.append(logits[0].numpy())
    return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def snippet_logits(model: nn.Module, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seizure logits [C], per-snippet logits [S, C]) over every snippet of one video."""
    model.eval()
    seizure, snippets = model(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))[None])
    return seizure[0].numpy(), snippets[0].numpy()
