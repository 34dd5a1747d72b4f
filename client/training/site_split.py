"""The site's own patient folds: which patients train, validate and are held out, whoever asks.

Patients are placed in folds in the order of a keyed hash (HMAC) of their
pseudonyms, under a key derived (HKDF) from the site's pseudonym secret, each
into the fold with the fewest patients of its class (then the fewest patients):
the folds are balanced and stratified, and nobody without the secret can say
who is where. The placement is kept in the site's privacy directory, so a
patient added later leaves every earlier patient where it was. A coordinator's
seed moves nothing: a federated run's `folds` and `test_fold` only name which of
the site's folds is held out. `split_seed`, a site-only setting, gives the site
other placements (e.g. repeated benchmarks); `site train` uses its own `--seed`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from semiofed.common.files import make_private_dir, write_json_atomic

SPLIT_CONTEXT = b"semiofed patient split v1"
FOLDS_FILE = "patient-folds.json"


def split_key(pseudonym_secret: bytes, split_seed: int = 0) -> bytes:
    """The site's split key, derived from its pseudonym secret (which never leaves the site) and its split seed."""
    info = SPLIT_CONTEXT + (b"/%d" % split_seed if split_seed else b"")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(pseudonym_secret)


def _rank(key: bytes, pseudonym: str) -> bytes:
    return hmac.new(key, pseudonym.encode("utf-8"), hashlib.sha256).digest()


def _majority(patient: Any) -> int:
    return int(np.bincount([s.label for s in patient.seizures]).argmax())


def assign_folds(patients: Sequence[Any], folds: int, key: bytes, known: dict[str, int] | None = None) -> dict[str, int]:
    """pseudonym -> fold. Patients in `known` keep their fold; each new patient, taken in keyed-hash order, joins
    the fold with the fewest patients of its majority class (then the fewest patients, then a keyed choice), so the
    folds stay balanced and stratified while no earlier patient ever moves."""
    fold = {p: f for p, f in (known or {}).items() if 0 <= f < folds}
    present = {p.pseudonym: _majority(p) for p in patients}
    for patient in sorted(patients, key=lambda p: _rank(key, p.pseudonym)):
        if patient.pseudonym in fold:
            continue
        label = present[patient.pseudonym]
        same = [sum(1 for q, f in fold.items() if f == g and present.get(q) == label) for g in range(folds)]
        total = [sum(1 for q, f in fold.items() if f == g and q in present) for g in range(folds)]
        offset = _rank(key, patient.pseudonym)[0] % folds
        fold[patient.pseudonym] = min(range(folds), key=lambda g: (same[g], total[g], (g - offset) % folds))
    return fold


def site_folds(patients: Sequence[Any], folds: int, key: bytes, state_file: Path, *, name: str | None = None) -> dict[str, int]:
    """The site's fold of each patient for `folds` folds, kept in `state_file` (under `name`, default the number of
    folds) so that a patient added later leaves every earlier patient where it was."""
    name = name or str(folds)
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
    known = {str(p): int(f) for p, f in state.get(name, {}).items()}
    fold = assign_folds(patients, folds, key, known)
    if fold != known:
        write_json_atomic(state_file, {**state, name: fold})
    return fold


def site_split(patients: Sequence[Any], folds: int, test_fold: int, fold: dict[str, int], *,
               validation: bool = True) -> tuple[list[Any], list[Any], list[Any]]:
    """(train, validation, test): fold `test_fold` tests, the next one validates (or none), the rest train."""
    val_fold = (test_fold + 1) % folds if validation else None
    test = [p for p in patients if fold[p.pseudonym] == test_fold]
    val = [p for p in patients if fold[p.pseudonym] == val_fold]
    train = [p for p in patients if fold[p.pseudonym] not in (test_fold, val_fold)]
    return train, val, test


def split_site_patients(site: Any, patients: Sequence[Any], folds: int, test_fold: int, *, validation: bool = True,
                        split_seed: int = 0) -> tuple[list[Any], list[Any], list[Any]]:
    """(train, validation, test) of a site's patients in its own folds (see the module docstring)."""
    key = split_key(site.pseudonym_secret(), split_seed)
    state = make_private_dir(site.layout.privacy_dir) / FOLDS_FILE
    fold = site_folds(patients, folds, key, state, name=f"{folds}" + (f"/seed-{split_seed}" if split_seed else ""))
    return site_split(patients, folds, test_fold, fold, validation=validation)


__all__ = ["split_key", "assign_folds", "site_folds", "site_split", "split_site_patients", "FOLDS_FILE"]
