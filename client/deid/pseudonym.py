"""Keyed-HMAC pseudonyms: stable within a site, unlinkable without the site's secret."""

from __future__ import annotations

import hashlib
import hmac

PSEUDONYM_HEX = 16  # 64 bits: collision-free for any site's number of patients


def _hmac(secret: bytes, *parts: str) -> str:
    message = "\x00".join(parts).encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def patient_pseudonym(secret: bytes, patient_id: str) -> str:
    """Pseudonym of a patient: 'p-' and 16 hex digits."""
    return "p-" + _hmac(secret, "patient", patient_id)


def record_id(secret: bytes, patient_id: str, seizure_id: str) -> str:
    """Pseudonymous id of one seizure record: 'r-' and 16 hex digits."""
    return "r-" + _hmac(secret, "seizure", patient_id, seizure_id)
