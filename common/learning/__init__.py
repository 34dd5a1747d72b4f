"""The classifier and how it learns: model, per-patient gradients, trainer, calibration, metrics, checkpoints."""
