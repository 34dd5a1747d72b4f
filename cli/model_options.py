"""Model-shape options shared by the commands that train (site train/cv, coordinator run/simulate)."""

from __future__ import annotations

from typing import Any

import typer

from semiofed.common.learning.spec import DEFAULT_MODEL, DESCRIPTORS_ALL


def descriptors_option() -> Any:
    """`--descriptors`: which motion descriptors of the keypoint stream the model reads."""
    return typer.Option(",".join(DEFAULT_MODEL.descriptors), "--descriptors",
                        help=f"Comma-separated motion descriptors the model reads, or '{DESCRIPTORS_ALL}' "
                             "(default: the ten that separate bilateral from focal motor seizures).")
