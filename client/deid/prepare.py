"""`site prepare`: every manifest row becomes one de-identified record in the site store.

Records are written atomically; finished ones are skipped on a re-run; a bad
video fails only its own record, with the reason, and the batch goes on.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from semiofed.client.deid.pipeline import DeidentifiedVideo, Deidentifier, DeidentifyConfig
from semiofed.client.deid.landmark_quality import tracking_warning
from semiofed.client.deid.manifest import ManifestRow, RowError, near_duplicate_ids, near_duplicate_message, read_manifest
from semiofed.client.deid.pseudonym import patient_pseudonym, record_id
from semiofed.client.site import Site
from semiofed.client.store import clear_failed, is_finished, mark_failed
from semiofed.common.constants import STCNN_INPUT_PATIENT
from semiofed.common.errors import SemiofedError
from semiofed.common.files import write_bytes_atomic
from semiofed.common.records.schema import SeizureRecord, remove_stale_staging, write_record

log = logging.getLogger(__name__)

LINKAGE_HEADER = ("record_id", "patient_pseudonym", "patient_id", "seizure_id", "video")


@dataclass(frozen=True)
class Outcome:
    """What happened to one manifest row."""

    line: int
    record_id: str | None
    status: str  # "done", "skipped" or "failed"
    error: str | None = None
    detection_rate: dict[str, float] | None = None
    n_snippets: int | None = None
    duration_s: float | None = None
    warning: str | None = None  # a record made, but one that tracks poorly (landmark_quality.tracking_warning)


def _sanitise(message: str, row: ManifestRow) -> str:
    """Remove the file name and original ids from a message that goes into the store."""
    for secret in sorted({str(row.video), row.video.name, row.video.stem, row.patient_id, row.seizure_id}, key=len, reverse=True):
        if secret:
            message = message.replace(secret, "<redacted>")
    return message


def _linked_patient_ids(site: Site) -> set[str]:
    """The original patient ids of the site's earlier records (empty if the site deleted its linkage file)."""
    path = site.layout.linkage_file
    if not path.is_file():
        return set()
    with open(path, newline="", encoding="utf-8") as stream:
        return {line["patient_id"] for line in csv.DictReader(stream)}


def _refuse_respelt_patients(site: Site, rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[RowError]]:
    """Rows whose patient id is another spelling of a patient the site already holds records of are refused."""
    known = _linked_patient_ids(site)
    near = near_duplicate_ids(known | {row.patient_id for row in rows})
    kept, refused = [], []
    for row in rows:
        if row.patient_id in near and row.patient_id not in known:
            spellings = [s for s in near[row.patient_id] if s in known or s == row.patient_id]
            message = near_duplicate_message(row.patient_id, spellings, "the site's earlier records")
            refused.append(RowError(row.line, row.patient_id, row.seizure_id, f"line {row.line}: {message}"))
        else:
            kept.append(row)
    return kept, refused


def _update_linkage(site: Site, rows: list[ManifestRow], secret: bytes, video_root: Path) -> None:
    """Merge the rows' original ids into the linkage file (kept apart from the store, deletable)."""
    path = site.layout.linkage_file
    entries: dict[str, tuple[str, ...]] = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as stream:
            for line in csv.DictReader(stream):
                entries[line["record_id"]] = tuple(line[c] for c in LINKAGE_HEADER)
    for row in rows:
        rid = record_id(secret, row.patient_id, row.seizure_id)
        try:
            video = str(row.video.relative_to(video_root.resolve()))
        except ValueError:
            video = str(row.video)
        entries[rid] = (rid, patient_pseudonym(secret, row.patient_id), row.patient_id, row.seizure_id, video)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LINKAGE_HEADER)
    writer.writerows(entries[k] for k in sorted(entries))
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def no_skeleton_problem(result: DeidentifiedVideo, video: Path) -> str | None:
    """Why a video without any pose is useless, or None: it is useful while it has STCNN features."""
    if result.detection_rate.get("pose", 0.0) > 0.0 or result.stcnn:
        return None
    return f"no person was detected in any frame of video {video} and this site computes no STCNN features"


def make_record(deidentifier: Deidentifier, row: ManifestRow, secret: bytes) -> SeizureRecord:
    """De-identify one manifest row's video into a record (in memory).

    A video where no pose is found still becomes a record: its STCNN stream
    (GESTURES' only stream) needs no skeleton, and its keypoint stream is all
    masked. Only a keypoints-only site refuses it, having nothing to keep."""
    result = deidentifier.run(row.video, roi=row.roi)
    problem = no_skeleton_problem(result, row.video)
    if problem:
        raise SemiofedError(problem, "check the video shows the patient; give the bed region with the manifest's "
                                     "roi column, or prepare with the stcnn stream")
    return SeizureRecord(
        record_id=record_id(secret, row.patient_id, row.seizure_id),
        patient_pseudonym=patient_pseudonym(secret, row.patient_id),
        label=row.label,
        fps=result.fps,
        duration_s=result.duration_s,
        arrays=result.arrays,
        onset_s=row.onset_s,
        offset_s=row.offset_s,
        generalization_s=row.generalization_s,
        view=row.view,
        side=row.side,
        stcnn=result.stcnn,
        stcnn_input=result.stcnn_input,
        snippet_frames=deidentifier.config.snippet_frames,
        models=result.models,
        detection_rate=result.detection_rate,
        frame_size=result.frame_size,
        capture=result.capture,
        quality=result.quality,
    )


def deidentify_video(
    video: Path,
    *,
    model_dir: Path | str | None = None,
    roi: tuple[float, float, float, float] | None = None,
    stcnn: str = "i3d",
    stcnn_input: str = STCNN_INPUT_PATIENT,
    streams: tuple[str, ...] | None = None,
) -> SeizureRecord:
    """De-identify one video in memory (as `site prepare` does, nothing written): for `predict`. `streams`: the
    de-identification streams to compute (default: all)."""
    config = DeidentifyConfig(stcnn=stcnn, stcnn_input=stcnn_input)
    if streams is not None:
        config = replace(config, streams=tuple(streams))
    with Deidentifier(config, model_dir) as deidentifier:
        result = deidentifier.run(Path(video), roi=roi)
    return SeizureRecord(
        record_id="r-prediction", patient_pseudonym="p-prediction", label="", fps=result.fps,
        duration_s=result.duration_s, arrays=result.arrays, stcnn=result.stcnn, stcnn_input=result.stcnn_input,
        snippet_frames=deidentifier.config.snippet_frames, models=result.models,
        detection_rate=result.detection_rate, frame_size=result.frame_size, capture=result.capture,
        quality=result.quality,
    )


def process_row(deidentifier: Deidentifier, site: Site, row: ManifestRow, secret: bytes) -> Outcome:
    """Make and store one record; any failure is caught, noted in the store and returned."""
    rid = record_id(secret, row.patient_id, row.seizure_id)
    try:
        record = make_record(deidentifier, row, secret)
        write_record(site.layout.records_dir, record)
    except SemiofedError as exc:
        mark_failed(site.layout, rid, _sanitise(str(exc), row))
        return Outcome(row.line, rid, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the batch
        log.exception("unexpected failure on manifest line %d", row.line)
        message = f"unexpected {type(exc).__name__} on video {row.video}: {exc}"
        mark_failed(site.layout, rid, _sanitise(message, row))
        return Outcome(row.line, rid, "failed", message)
    clear_failed(site.layout, rid)
    return Outcome(row.line, rid, "done", detection_rate=record.detection_rate,
                   n_snippets=record.n_snippets, duration_s=record.duration_s,
                   warning=tracking_warning(record.detection_rate))


# Worker processes keep one Deidentifier (models loaded once per process).
_WORKER: dict[str, object] = {}


def _worker_init(config: DeidentifyConfig, model_dir: str | None, site_dir: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from semiofed.client.site import open_site

    _WORKER["deidentifier"] = Deidentifier(config, model_dir)
    _WORKER["site"] = open_site(Path(site_dir))


def _worker_run(row: ManifestRow) -> Outcome:
    site = _WORKER["site"]
    return process_row(_WORKER["deidentifier"], site, row, site.pseudonym_secret())  # type: ignore[arg-type]


def prepare_site(
    site: Site,
    manifest: Path,
    *,
    video_root: Path | None = None,
    config: DeidentifyConfig | None = None,
    model_dir: Path | str | None = None,
    workers: int = 1,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Process every manifest row into the site store; return one outcome per row."""
    manifest = Path(manifest)
    root = Path(video_root) if video_root is not None else manifest.parent
    rows, row_errors = read_manifest(manifest, root)
    rows, respelt = _refuse_respelt_patients(site, rows)
    row_errors = row_errors + respelt
    if remove_stale_staging(site.layout.records_dir):
        log.warning("removed half-written records left by an interrupted run")
    secret = site.pseudonym_secret()
    config = config or DeidentifyConfig()
    outcomes: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    for error in row_errors:
        rid = record_id(secret, error.patient_id, error.seizure_id) if error.patient_id and error.seizure_id else None
        if rid:
            mark_failed(site.layout, rid, f"invalid manifest row (line {error.line}); the prepare summary names the problem")
        report(Outcome(error.line, rid, "failed", error.message))
    _update_linkage(site, rows, secret, root)
    todo = []
    for row in rows:
        rid = record_id(secret, row.patient_id, row.seizure_id)
        if is_finished(site.layout, rid):
            report(Outcome(row.line, rid, "skipped"))
        else:
            todo.append(row)
    if on_start:
        on_start(len(todo))
    if not todo:
        return outcomes
    if workers <= 1:
        with Deidentifier(config, model_dir) as deidentifier:
            for row in todo:
                report(process_row(deidentifier, site, row, secret))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                 initargs=(config, str(model_dir) if model_dir else None, str(site.layout.root), threads)) as pool:
            for outcome in pool.map(_worker_run, todo):
                report(outcome)
    return outcomes
