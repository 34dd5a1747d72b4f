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

from semiofed.common.errors import SemiofedError
from semiofed.common.learning.checkpoint import save_checkpoint
from semiofed.common.learning.classifier import ClassifierConfig, SeizureClassifier, build_classifier
from semiofed.common.learning.trainer import Patient, Seizure, TrainConfig, Trainer

# Full passes over the public seizures (one step each at the default batch): as studied (docs/benchmarks.md).
PUBLIC_EPOCHS = 30


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
    model.eval()
    return model


def save_public_model(directory: Path, model: SeizureClassifier, seizures: int, source: str = "") -> Path:
    """Write the public model as a checkpoint a run can start from (`coordinator run --initial-model`)."""
    where = f" {source}" if source else ""
    return save_checkpoint(directory, model, {"temperature": 1.0, "trained": (
        f"public reference{where} only ({seizures} seizures), no DP, no site data")})


def public_patients(seizures: Sequence[Seizure]) -> list[Patient]:
    """Public reference seizures as training units, one seizure each (public data: no patient to protect)."""
    return [Patient(pseudonym=f"public-{i}", seizures=(s,)) for i, s in enumerate(seizures)]


__all__ = ["PUBLIC_EPOCHS", "train_public_model", "save_public_model", "public_patients"]
