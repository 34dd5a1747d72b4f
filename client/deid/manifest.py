"""The site manifest (CSV): one row per seizure video, parsed and validated row by row."""

from __future__ import annotations

import csv
import math
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from semiofed.common.errors import ManifestError
from semiofed.common.records.schema import TOKEN_RE

REQUIRED_COLUMNS = ("video", "patient_id", "seizure_id", "label")
OPTIONAL_COLUMNS = ("onset_s", "offset_s", "generalization_s", "view", "roi", "side")
# The side of a seizure's lateralised limb signs, as the clinical report gives it (empty: not lateralised or unknown).
SIDES = ("left", "right")
EXPECTED_HEADER = ",".join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
MAX_ID_LENGTH = 128


_SEPARATORS = re.compile(r"[\s_.\-/]+")
_LEADING_ZEROS = re.compile(r"(?<![0-9])0+(?=[0-9])")


def patient_key(patient_id: str) -> str:
    """The form two spellings of one patient's id share: "P001", "p001", "P-001" and "P 1" all give "p1".

    A patient is DP's privacy unit: two spellings of one id would make one patient two units, each charged
    alone. Ids are kept as written (their pseudonyms do not change); ids with one key but different spellings
    are refused (`near_duplicate_ids`).
    """
    text = unicodedata.normalize("NFKC", patient_id).casefold()
    return _LEADING_ZEROS.sub("", _SEPARATORS.sub("", text))


def near_duplicate_ids(ids: Iterable[str]) -> dict[str, list[str]]:
    """Each id that shares its `patient_key` with another, differently written id -> all spellings of that key."""
    spellings: dict[str, set[str]] = {}
    for patient_id in ids:
        spellings.setdefault(patient_key(patient_id), set()).add(patient_id)
    return {pid: sorted(group) for group in spellings.values() if len(group) > 1 for pid in group}


def near_duplicate_message(patient_id: str, spellings: list[str], where: str = "the manifest") -> str:
    """The one-line refusal for a row whose patient id is another spelling of an id in `where`."""
    others = ", ".join(f"'{s}'" for s in spellings if s != patient_id)
    return (f"patient id '{patient_id}' looks like the same patient as {others} in {where} (ids differ only in case, "
            "separators or leading zeros, and each would be its own privacy unit); write one id per patient")


@dataclass(frozen=True)
class ManifestRow:
    """One valid manifest row: a seizure with its video resolved inside the video root."""

    line: int
    video: Path
    patient_id: str
    seizure_id: str
    label: str
    onset_s: float | None = None
    offset_s: float | None = None
    generalization_s: float | None = None
    view: str | None = None
    roi: tuple[float, float, float, float] | None = None
    side: str | None = None


@dataclass(frozen=True)
class RowError:
    """A manifest row that cannot be processed, with the reason."""

    line: int
    patient_id: str
    seizure_id: str
    message: str


def parse_roi(text: str) -> tuple[float, float, float, float]:
    """Parse a manifest ROI "x0;y0;x1;y1" (fractions of width and height) into a tuple."""
    parts = [p.strip() for p in str(text).split(";")]
    fix = 'write it as "x0;y0;x1;y1" with fractions of width and height, 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, e.g. "0.1;0;0.9;1"'
    if len(parts) != 4:
        raise ManifestError(f"roi '{text}' has {len(parts)} fields, expected 4", fix)
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise ManifestError(f"roi '{text}' has a field that is not a number", fix) from None
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise ManifestError(f"roi '{text}' has a value outside [0, 1]", fix)
    if not (x0 < x1 and y0 < y1):
        raise ManifestError(f"roi '{text}' is empty (needs x0 < x1 and y0 < y1)", fix)
    return (x0, y0, x1, y1)


def _time(row: dict[str, str], column: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"{column} '{text}' is not a number of seconds", f"write {column} as seconds from video start, e.g. 12.5") from None
    if not math.isfinite(value) or value < 0:
        raise ManifestError(f"{column} {text} is negative or not finite", f"write {column} as seconds from video start")
    return value


def _resolve(video: str, video_root: Path) -> Path:
    if not video:
        raise ManifestError("video is empty", "give the video path relative to --video-root")
    root = video_root.resolve()
    path = Path(video)
    path = (path if path.is_absolute() else root / path).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise ManifestError(f"video {video} lies outside the video root {root}", "move it under --video-root or change --video-root")
    return path


def _parse_row(line: int, row: dict[str, str], video_root: Path) -> ManifestRow:
    patient_id = (row.get("patient_id") or "").strip()
    seizure_id = (row.get("seizure_id") or "").strip()
    for name, value in (("patient_id", patient_id), ("seizure_id", seizure_id)):
        if not value:
            raise ManifestError(f"{name} is empty", f"give every row a {name}")
        if len(value) > MAX_ID_LENGTH:
            raise ManifestError(f"{name} is longer than {MAX_ID_LENGTH} characters", f"shorten the {name}")
    label = (row.get("label") or "").strip()
    if not TOKEN_RE.match(label):
        raise ManifestError(f"label '{label}' is not a short token", "use a class name such as FOS or TCS (letters, digits, _ . -)")
    view = (row.get("view") or "").strip() or None
    if view is not None and not TOKEN_RE.match(view):
        raise ManifestError(f"view '{view}' is not a short token", "use e.g. bed_side, ceiling, chair")
    roi_text = (row.get("roi") or "").strip()
    side = (row.get("side") or "").strip().lower() or None
    if side is not None and side not in SIDES:
        raise ManifestError(f"side '{row.get('side')}' is not left or right",
                            "write the side of the lateralised limb signs as left or right, or leave it empty")
    onset, offset, generalization = _time(row, "onset_s"), _time(row, "offset_s"), _time(row, "generalization_s")
    if onset is not None and offset is not None and offset <= onset:
        raise ManifestError(f"offset_s {offset} is not after onset_s {onset}", "check the seizure times")
    if generalization is not None and onset is not None and generalization < onset:
        raise ManifestError(f"generalization_s {generalization} is before onset_s {onset}", "check the seizure times")
    return ManifestRow(
        line=line,
        video=_resolve((row.get("video") or "").strip(), video_root),
        patient_id=patient_id,
        seizure_id=seizure_id,
        label=label,
        onset_s=onset,
        offset_s=offset,
        generalization_s=generalization,
        view=view,
        roi=parse_roi(roi_text) if roi_text else None,
        side=side,
    )


def read_manifest(path: Path, video_root: Path | None = None) -> tuple[list[ManifestRow], list[RowError]]:
    """Parse a manifest: valid rows, and per-row errors (bad values, paths, duplicate seizure ids).

    The header itself must be right; a wrong header fails the whole manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist", "pass the CSV with --manifest")
    root = Path(video_root) if video_root is not None else path.parent
    if not root.is_dir():
        raise ManifestError(f"video root {root} is not a directory", "pass an existing folder with --video-root")
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
            if missing or unknown:
                problems = ([f"lacks column(s) {', '.join(missing)}"] if missing else []) + (
                    [f"has unknown column(s) {', '.join(unknown)}"] if unknown else [])
                raise ManifestError(f"manifest {path} {' and '.join(problems)}", f"use the header {EXPECTED_HEADER}")
            raw_rows = [(reader.line_num, {(k or "").strip(): (v or "") for k, v in row.items()}) for row in reader]
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path} is not UTF-8 text", "save it as CSV (UTF-8)") from exc
    except csv.Error as exc:
        raise ManifestError(f"manifest {path} is not valid CSV ({exc})", "save it as CSV (UTF-8)") from exc
    if not raw_rows:
        raise ManifestError(f"manifest {path} has no rows", "add one row per seizure video")

    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    first_line: dict[tuple[str, str], int] = {}
    duplicates: set[tuple[str, str]] = set()
    for line, raw in raw_rows:
        key = ((raw.get("patient_id") or "").strip(), (raw.get("seizure_id") or "").strip())
        if key in first_line:
            duplicates.add(key)
        else:
            first_line[key] = line
    near = near_duplicate_ids({pid for pid, _ in first_line if pid})
    for line, raw in raw_rows:
        key = ((raw.get("patient_id") or "").strip(), (raw.get("seizure_id") or "").strip())
        if key[0] in near:
            errors.append(RowError(line, *key, f"line {line}: {near_duplicate_message(key[0], near[key[0]])}"))
            continue
        if key in duplicates and all(key):
            errors.append(RowError(line, *key, f"seizure id '{key[1]}' of patient '{key[0]}' appears more than once "
                                                "(first at line {}); give each seizure its own id".format(first_line[key])))
            continue
        try:
            rows.append(_parse_row(line, raw, root))
        except ManifestError as exc:
            errors.append(RowError(line, *key, f"line {line}: {exc}"))
    return rows, errors
