"""Trained-model checkpoints: safetensors weights plus JSON metadata, verified on every load.

A checkpoint is a directory holding `model.safetensors` and `model.json`. The
JSON carries the weights' full sha256, the classifier config (labels,
streams, shape), the feature extractor the records were made with (name,
weights sha256, dimension), the training and privacy parameters, the
calibration temperature and the held-out metrics.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiofed.common.learning.classifier import ClassifierConfig, SeizureClassifier, build_classifier
from semiofed.common.errors import SemiofedError
from semiofed.common.files import make_private_dir, sha256_of, write_bytes_atomic, write_json_atomic
from semiofed.common.records.schema import SeizureRecord
from semiofed.common.constants import needs_stcnn
from semiofed.common.records.features import KEYPOINT_FEATURES_VERSION, STREAM_KEYPOINTS, STREAM_STCNN, feature_extractor_of

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_VERSION = 1


class CheckpointError(SemiofedError):
    """A checkpoint is missing, corrupt, or does not fit the data it is used on."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    model: SeizureClassifier
    config: ClassifierConfig
    meta: dict[str, Any]

    @property
    def temperature(self) -> float:
        """Calibration temperature (1.0 if none was fitted)."""
        return float(self.meta.get("temperature", 1.0))

    def check_record(self, record: SeizureRecord) -> None:
        """Raise unless the record's features were made the way this model was trained on."""
        check_feature_extractor(self.meta.get("feature_extractor", {}), record, self.config)


def check_feature_extractor(expected: dict[str, Any], record: SeizureRecord, config: ClassifierConfig) -> None:
    """Raise CheckpointError if a record's STCNN (name, weights, dimension) differs from the model's."""
    if not needs_stcnn(config.streams):
        return
    got = feature_extractor_of(record)
    if got["dim"] != config.stcnn_dim and (STREAM_STCNN in config.streams or not got["dim"]):
        raise CheckpointError(
            f"record {record.record_id} has {got['dim']}-d snippet features, the model expects {config.stcnn_dim}-d",
            f"prepare the records with the model's feature extractor '{expected.get('name')}'",
        )
    if expected.get("input") and got["input"] and expected["input"] != got["input"]:
        raise CheckpointError(
            f"record {record.record_id}'s snippet features saw the video as '{got['input']}', the model was trained "
            f"on '{expected['input']}'",
            f"re-prepare the records with `--stcnn-input {expected['input']}`, or use a model trained on these features",
        )
    for key in ("name", "sha256"):
        if expected.get(key) and got[key] and expected[key] != got[key]:
            raise CheckpointError(
                f"record {record.record_id} was prepared with feature extractor {got['name']} (weights sha256 "
                f"{str(got['sha256'])[:12]}...), the model was trained on {expected.get('name')} "
                f"(sha256 {str(expected.get('sha256'))[:12]}...)",
                f"re-prepare the records with --stcnn {expected.get('name')} and the same weights, or use a model "
                "trained on these features",
            )


# What save_checkpoint writes itself (a copy of a checkpoint's meta passes the rest back in).
CHECKPOINT_OWN_KEYS = ("format_version", "created", "weights_sha256", "update_sha256", "classifier", "keypoint_features_version")


def save_checkpoint(directory: Path, model: SeizureClassifier, meta: dict[str, Any]) -> Path:
    """Write weights and metadata into `directory` (atomically, file by file; weights first)."""
    from safetensors.torch import save

    from semiofed.common.learning.weights import model_update_sha256

    directory = make_private_dir(Path(directory))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_bytes_atomic(directory / WEIGHTS_FILE, save(state, metadata={"format": "semiofed-classifier"}))
    full = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "weights_sha256": sha256_of(directory / WEIGHTS_FILE),
        # what a ledger entry names this model by (docs/privacy.md)
        "update_sha256": model_update_sha256(model),
        "classifier": model.config.to_dict(),
        "keypoint_features_version": KEYPOINT_FEATURES_VERSION,
        **meta,
    }
    write_json_atomic(directory / META_FILE, full)
    log.info("checkpoint written to %s", directory)
    return directory


def _resolve(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        return path
    if path.name in (WEIGHTS_FILE, META_FILE):
        return path.parent
    raise CheckpointError(f"checkpoint {path} not found", f"give a directory holding {WEIGHTS_FILE} and {META_FILE}")


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint, verifying the weights' sha256 and that they fit the stored config."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = _resolve(path)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint metadata {meta_path} is missing", "give the directory `site train` wrote") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {meta_path} is unreadable ({exc})", "restore the checkpoint") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {directory} has format {meta.get('format_version') if isinstance(meta, dict) else '?'}, "
                              f"this semiofed reads {FORMAT_VERSION}", "retrain with this version")
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint weights {weights_path} are missing", "restore the checkpoint directory")
    actual = sha256_of(weights_path)
    if actual != meta.get("weights_sha256"):
        raise CheckpointError(
            f"checkpoint weights {weights_path} are corrupt or were changed (sha256 {actual[:12]}..., "
            f"metadata says {str(meta.get('weights_sha256'))[:12]}...)",
            "restore the checkpoint from its source or retrain",
        )
    config = ClassifierConfig.from_dict(meta.get("classifier", {}))
    if STREAM_KEYPOINTS in config.streams and meta.get("keypoint_features_version") != KEYPOINT_FEATURES_VERSION:
        raise CheckpointError(
            f"checkpoint {directory} was trained on keypoint features version {meta.get('keypoint_features_version')}, "
            f"this semiofed computes version {KEYPOINT_FEATURES_VERSION}",
            "retrain the model with this semiofed (the records need no new `site prepare`)",
        )
    model = build_classifier(config)
    try:
        state = load(weights_path.read_bytes())
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint weights {weights_path} do not fit the stored classifier config ({exc})",
                              "restore the checkpoint or retrain") from exc
    model.eval()
    return Checkpoint(path=directory, model=model, config=config, meta=meta)
