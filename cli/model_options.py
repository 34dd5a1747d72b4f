"""Model-shape options shared by the commands that train (site train/cv, coordinator run/simulate)."""

from __future__ import annotations

from typing import Any

import typer

from semiofed.common.learning.spec import DEFAULT_MODEL, DESCRIPTORS_ALL


def labels_option() -> Any:
    """`--labels`: the label set, in output order."""
    return typer.Option(",".join(DEFAULT_MODEL.labels), "--labels", help="Label set, in output order.")


def streams_option() -> Any:
    """`--streams`: the model's input streams."""
    return typer.Option(",".join(DEFAULT_MODEL.streams), "--streams", help="Input streams.")


def temporal_option() -> Any:
    """`--temporal`: the temporal model."""
    return typer.Option(DEFAULT_MODEL.temporal, "--temporal", help="Temporal model.")


def hidden_option() -> Any:
    """`--hidden`: the recurrent models' width."""
    return typer.Option(DEFAULT_MODEL.hidden, "--hidden", help="Hidden units.")


def segments_option() -> Any:
    """`--segments`: segments per seizure."""
    return typer.Option(DEFAULT_MODEL.n_segments, "--segments", help="Segments per seizure.")


def descriptors_option() -> Any:
    """`--descriptors`: which motion descriptors of the keypoint stream the model reads."""
    return typer.Option(",".join(DEFAULT_MODEL.descriptors), "--descriptors",
                        help=f"Comma-separated motion descriptors the model reads, or '{DESCRIPTORS_ALL}' "
                             "(default: the ten that separate bilateral from focal motor seizures).")


def dp_mode_option() -> Any:
    """`--dp-mode`: local (each update carries the full noise) or distributed (only SecAgg+'s sum does)."""
    from semiofed.common.federation.run_config import DP_LOCAL, DP_MODES

    return typer.Option(DP_LOCAL, "--dp-mode",
                        help=f"{' or '.join(DP_MODES)}: distributed needs SecAgg+, --strategy fedadam, and sites "
                             "whose policy opts in (one DP step per round; docs/privacy.md).")
