"""Calibrate a released model on public reference seizures: its decision threshold and scale, and the reference
distribution of the unusual-seizure check. Both are post-processing on public data (no privacy cost).

Used by `semiofed demo` and `semiofed calibrate`; the reference store is any site store of public seizures (e.g.
phantom seizures run through `site prepare`), never a hospital's patients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.common.learning.checkpoint import CHECKPOINT_OWN_KEYS, Checkpoint, save_checkpoint
from semiofed.common.records.schema import SeizureRecord


def _reference_site(store: Path) -> Any:
    """The opened site store of a reference, or a one-line error when the folder is not a site store."""
    from semiofed.client.site import open_site

    if not (Path(store) / "site.json").is_file():
        raise SemiofedError(f"reference store {store} is not a site store", "give a folder made by `semiofed site init` "
                            "and filled by `semiofed site prepare` with public reference seizures")
    return open_site(Path(store))


def reference_records(store: Path, labels: Sequence[str]) -> list[SeizureRecord]:
    """The records of a public reference store whose label the model knows."""
    from semiofed.client.training.local import load_site_records

    return load_site_records(_reference_site(store), labels)


def public_reference_records(store: Path, labels: Sequence[str]) -> list[SeizureRecord]:
    """`reference_records` of a store marked as a public reference (`site init --public-reference`), else a one-line
    error before any record is read: what is fitted on it (a model without DP, the calibration, the unusual-seizure
    statistics) leaves with the model, so an operator's slip must not make a hospital's patients the reference."""
    from semiofed.client.training.local import load_site_records

    site = _reference_site(store)
    if not site.public_reference:
        raise SemiofedError(f"store {store} is not marked as a public reference: what is fitted on it leaves with the "
                            "model without DP", "give a store made by `semiofed site init --public-reference` and "
                            "filled with public, consented seizure videos only")
    return load_site_records(site, labels)


def calibrate_model(model: Any, records: Sequence[SeizureRecord], n_segments: int) -> dict[str, Any]:
    """Fold the reference's scale and shift into the model's head (in place); return what was fitted."""
    from semiofed.client.training.local import group_patients
    from semiofed.common.learning.calibration import calibrate_on_reference
    from semiofed.common.learning.trainer import predict_logits

    config = model.config
    seizures = [s for p in group_patients(list(records), config.labels, config.streams) for s in p.seizures]
    logits = predict_logits(model, seizures, n_segments=n_segments)
    return calibrate_on_reference(model, logits, np.array([s.label for s in seizures]))


def calibrate_checkpoint(checkpoint: Checkpoint, records: Sequence[SeizureRecord], out: Path) -> Path:
    """A copy of the checkpoint calibrated on the reference records, with the unusual-seizure reference; returns it."""
    from semiofed.common.learning.unusual import fit_unusual_on_records

    calibration = calibrate_model(checkpoint.model, records, checkpoint.config.n_segments)
    unusual = fit_unusual_on_records(records)
    meta = {k: v for k, v in checkpoint.meta.items() if k not in CHECKPOINT_OWN_KEYS}
    return save_checkpoint(Path(out), checkpoint.model, meta | {"temperature": 1.0, "calibration": calibration,
                                                                 "unusual": unusual.to_json()})
