"""The public initial model: the classifier trained without DP on public reference seizures, before any site trains.

Under patient-level DP a hospital's few dozen patients move a model little
against the noise, and a federated DP run from random weights sometimes ends
near chance or inverted. Public seizures (published teaching videos run
through `site prepare`; in the demo, the public phantom reference that
already sets the decision threshold) are no site's data: a model trained on
them costs no privacy, and the federated DP rounds start from it instead of
from random weights. Measured in docs/benchmarks.md, "The public initial
model", next to the public model alone (what the federation must beat).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.common.learning.checkpoint import save_checkpoint
from semiofed.common.learning.classifier import ClassifierConfig, SeizureClassifier, build_classifier
from semiofed.common.learning.trainer import Patient, Seizure, TrainConfig, Trainer
from semiofed.common.records.features import STREAM_SIDE

# Full passes over the public seizures (one step each at the default batch): as studied (docs/benchmarks.md).
PUBLIC_EPOCHS = 30
# The side output's L2 penalty on the mean log loss of the public side-labelled seizures (bench_side_evidence's).
SIDE_L2 = 0.01


def train_public_model(patients: Sequence[Patient], config: ClassifierConfig, *, lr: float, optimizer: str,
                       batch_patients: int, seed: int, epochs: int = PUBLIC_EPOCHS) -> SeizureClassifier:
    """The classifier of `config` trained on public reference patients (plain SGD/Adam, no DP, no site data)."""
    labels = {s.label for p in patients for s in p.seizures}
    if labels != set(range(len(config.labels))):
        missing = [config.labels[i] for i in range(len(config.labels)) if i not in labels]
        raise SemiofedError(f"the public reference holds no {', '.join(missing)} seizure: a public initial model needs "
                            "every label", "add public reference seizures of every label, or start from random weights")
    n_inputs = {s.inputs.shape[1] for p in patients for s in p.seizures}
    if n_inputs != {config.input_dim}:
        raise SemiofedError(f"the public reference's model inputs are {sorted(n_inputs)} wide, the run's model reads "
                            f"{config.input_dim}", "prepare the reference with the run's streams and feature extractor")
    model = build_classifier(config, seed=seed)
    trainer = Trainer(model, TrainConfig(epochs=epochs, batch_patients=batch_patients, lr=lr, optimizer=optimizer,
                                         dp=False, seed=seed), n_segments=config.n_segments)
    try:
        trainer.fit(list(patients))
    finally:
        trainer.close()
    if config.side_output:
        fit_public_side(model, [s for p in patients for s in p.seizures])
    model.eval()
    return model


def side_logistic_weights(x: np.ndarray, y: np.ndarray, l2: float = SIDE_L2) -> np.ndarray:
    """[F] logistic weights without intercept (a mirrored seizure gets the mirrored answer) for features x [N, F]
    and labels y [N] (1: left): the minimum of the mean log loss + l2 |w|^2, by L-BFGS (convex: one answer)."""
    import torch

    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w, ys) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def fit_public_side(model: SeizureClassifier, seizures: Sequence[Seizure]) -> int:
    """Set the side output's weights to the penalised logistic fit on the public seizures that carry a side label;
    return how many did (0: the side output is left as it is).

    The side output is linear in the snippets' left-minus-right differences and reads nothing else, so its logit on
    a seizure is its weights times the mean difference over the snippets: a 7-weight logistic regression. Trained
    with the decision by Adam on a few labelled seizures, every weight moves at the same pace whatever its
    evidence, and a weakly telling difference ends up weighted like the strongest; the convex fit weighs each by
    what it explains."""
    import torch

    labelled = [s for s in seizures if s.side >= 0]
    if not labelled:
        return 0
    columns = model.config.stream_columns(STREAM_SIDE)
    x = np.stack([s.inputs[:, columns].astype(np.float64).mean(axis=0) for s in labelled])
    w = side_logistic_weights(x, np.array([float(s.side) for s in labelled]))
    with torch.no_grad():
        model.side.weight.copy_(torch.from_numpy(w).to(model.side.weight.dtype)[None, :])
    return len(labelled)


def save_public_model(directory: Path, model: SeizureClassifier, seizures: int, source: str = "") -> Path:
    """Write the public model as a checkpoint a run can start from (`coordinator run --initial-model`)."""
    where = f" {source}" if source else ""
    return save_checkpoint(directory, model, {"temperature": 1.0, "trained": (
        f"public reference{where} only ({seizures} seizures), no DP, no site data")})


def public_patients(seizures: Sequence[Seizure]) -> list[Patient]:
    """Public reference seizures as training units, one seizure each (public data: no patient to protect)."""
    return [Patient(pseudonym=f"public-{i}", seizures=(s,)) for i, s in enumerate(seizures)]


__all__ = ["PUBLIC_EPOCHS", "SIDE_L2", "fit_public_side", "public_patients", "save_public_model", "side_logistic_weights",
           "train_public_model"]
