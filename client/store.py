"""The site's record store: what is finished, what failed and why."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from semiofed.client.deid.landmark_quality import tracking_warning
from semiofed.client.site import SiteLayout
from semiofed.common.errors import RecordError
from semiofed.common.files import write_json_atomic
from semiofed.common.records.schema import META_FILE, STATUS_FAILED, read_meta

if TYPE_CHECKING:
    from semiofed.common.learning.unusual import UnusualModel

SHOW_FIELDS = ("record_id", "status", "error", "label", "patient_pseudonym", "n_frames", "fps",
               "duration_s", "detection_rate", "quality", "capture", "n_snippets", "feature_dim", "warning")


def is_finished(layout: SiteLayout, record_id: str) -> bool:
    """True when a complete record with this id is in the store."""
    record_dir = layout.records_dir / record_id
    if not (record_dir / META_FILE).is_file():
        return False
    try:
        read_meta(record_dir)
    except RecordError:
        return False
    return True


def mark_failed(layout: SiteLayout, record_id: str, error: str) -> None:
    """Record why a seizure could not be processed (the message carries no identifier)."""
    write_json_atomic(layout.failed_dir / f"{record_id}.json",
                      {"record_id": record_id, "status": STATUS_FAILED, "error": error})


def clear_failed(layout: SiteLayout, record_id: str) -> None:
    """Forget an earlier failure once the record has been made."""
    (layout.failed_dir / f"{record_id}.json").unlink(missing_ok=True)


def list_records(layout: SiteLayout) -> list[dict[str, Any]]:
    """One summary per record, finished or failed, sorted by record id."""
    rows: dict[str, dict[str, Any]] = {}
    if layout.failed_dir.is_dir():
        for path in sorted(layout.failed_dir.glob("*.json")):
            try:
                failed = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                failed = {"record_id": path.stem, "error": "failure note is unreadable"}
            rows[path.stem] = {key: None for key in SHOW_FIELDS} | {
                "record_id": path.stem, "status": STATUS_FAILED, "error": failed.get("error")}
    if layout.records_dir.is_dir():
        for record_dir in sorted(p for p in layout.records_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                meta = read_meta(record_dir)
            except RecordError as exc:
                rows[record_dir.name] = {key: None for key in SHOW_FIELDS} | {
                    "record_id": record_dir.name, "status": STATUS_FAILED, "error": str(exc)}
                continue
            rows[record_dir.name] = {key: meta.get(key) for key in SHOW_FIELDS} | {
                "error": None, "warning": tracking_warning(meta.get("detection_rate") or {})}
    return [rows[k] for k in sorted(rows)]


def unusual_records(layout: SiteLayout, unusual: "UnusualModel") -> dict[str, dict[str, Any]]:
    """record id -> the unusual-seizure check ({score, tail, threshold, flag}) of every finished record."""
    from semiofed.common.records.schema import read_record

    out: dict[str, dict[str, Any]] = {}
    if layout.records_dir.is_dir():
        for record_dir in sorted(p for p in layout.records_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                out[record_dir.name] = unusual.assess(read_record(record_dir))
            except RecordError:
                continue  # listed as failed by list_records
    return out
