"""The site's privacy ledger: one signed, hash-chained JSON line per DP release; its format, reading, checking the chain and a head.

Format (JSON Lines, UTF-8, one entry a line, each line the entry's canonical
JSON: sorted keys, no spaces):

- release fields (`RELEASE_FIELDS`): who released what, with which DP
  parameters, and the epsilon the site's accountant (Opacus PRV) computed for
  this release alone and for all releases so far;
- chain fields: `ledger_version`, `seq` (0, 1, 2, ...) and `prev_hash` (the
  previous entry's `entry_hash`; `GENESIS_HASH` for seq 0);
- seal: `entry_hash` = hex sha256 of the canonical JSON of every other field
  (all but `entry_hash` and `signature`), and `signature` = base64 DER
  ECDSA P-384/SHA-384 by the site key over `ENTRY_CONTEXT || entry_hash bytes`.

Everything here needs only the site's public key. Writing (seal, append,
sign a head: the site's private key) is `ledger_writer.py`: appends are
serialised with an exclusive lock, fsync'd, and refused when the existing
ledger does not verify against the signing key's own public key. The
auditor's full check (epsilon recomputed independently) is
`common/audit/verify.py`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiofed.common.errors import SemiofedError
from semiofed.common.privacy.keys import PublicKey, public_key_fingerprint, verify_digest
from semiofed.common.privacy.policy import NEIGHBOURING_RELATION, PRIVACY_UNIT, PrivacyPolicy

LEDGER_VERSION = 1
GENESIS_HASH = "0" * 64
ENTRY_CONTEXT = b"semiofed-ledger-entry-v1\x00"
HEAD_CONTEXT = b"semiofed-ledger-head-v1\x00"
ACCOUNTANT_PRV = "opacus-prv"
KIND_LOCAL = "local"
KIND_FEDERATED = "federated"
KIND_EVALUATION = "evaluation"  # a noisy evaluation of a global model on the site's held-out patients
KINDS = (KIND_LOCAL, KIND_FEDERATED, KIND_EVALUATION)

POLICY_FIELDS = ("max_epsilon", "target_delta", "min_noise_multiplier", "clipping_norm")
RELEASE_FIELDS = (
    "site_id", "run_id", "round", "time", "kind", "update_sha256",
    "privacy_unit", "neighbouring_relation", "noise_multiplier", "sample_rate", "steps", "clipping_norm",
    "accountant", "epsilon", "epsilon_cumulative", "delta", "policy",
)
# Optional, on a distributed-DP release only: {"sites": K, "colluders": t, "site_noise_multiplier": sigma_site}.
# `noise_multiplier` is then the sigma the summed update carries (what is accounted), sigma_site the noise this
# site's own update carried: sigma_site * sqrt(K - t) >= sigma (common/audit/verify.py checks it).
DISTRIBUTED_FIELD = "distributed"
CHAIN_FIELDS = ("ledger_version", "seq", "prev_hash")
SEAL_FIELDS = ("entry_hash", "signature")
HEAD_FIELDS = ("ledger_version", "site_id", "seq", "entry_hash", "epsilon_cumulative", "epsilon_max", "delta", "time")

# What verification (here and in common/audit/verify.py) can find wrong, one name per kind of problem.
TORN = "torn"                      # last line has no newline: an append was interrupted
MALFORMED = "malformed"            # not JSON, or a field missing or of the wrong type
TAMPERED = "tampered"              # content does not hash to its entry_hash
BAD_SIGNATURE = "bad-signature"    # signature does not verify with the site key (another key, or altered)
GAP = "gap"                        # sequence numbers missing: entries were removed
REORDERED = "reordered"            # entries out of sequence order
DUPLICATE = "duplicate"            # a sequence number appears twice
BROKEN_LINK = "broken-link"        # prev_hash does not name the previous entry: spliced or forked
TRUNCATED = "truncated"            # entries the site's signed head names are missing from the end
SITE_MISMATCH = "site-mismatch"    # entries (or head) of another site
EPSILON_UNDER_REPORTED = "epsilon-under-reported"
OVER_BUDGET = "over-budget"        # cumulative epsilon above the policy's max_epsilon
OUTSIDE_POLICY = "outside-policy"  # noise below the policy minimum, or delta above its target

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class LedgerError(SemiofedError):
    """The privacy ledger is missing, unreadable, or does not verify, or an entry is invalid."""


# --- canonical form, hashing ------------------------------------------------
def canonical_bytes(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """Hex sha256 of an entry's canonical JSON without `entry_hash` and `signature`."""
    return hashlib.sha256(canonical_bytes({k: v for k, v in entry.items() if k not in SEAL_FIELDS})).hexdigest()


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. 2025-01-31T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- release fields --------------------------------------------------------
def release_fields(
    *,
    site_id: str,
    run_id: str,
    round: int,
    kind: str,
    update_sha256: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    clipping_norm: float,
    epsilon: float,
    epsilon_cumulative: float,
    policy: PrivacyPolicy,
    distributed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of one DP release, ready for `append_entry` (time is now; delta is the policy's)."""
    extra = {DISTRIBUTED_FIELD: distributed} if distributed is not None else {}
    return extra | {
        "site_id": site_id, "run_id": run_id, "round": int(round), "time": utc_now(), "kind": kind,
        "update_sha256": update_sha256, "privacy_unit": PRIVACY_UNIT, "neighbouring_relation": NEIGHBOURING_RELATION,
        "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate), "steps": int(steps),
        "clipping_norm": float(clipping_norm), "accountant": ACCOUNTANT_PRV, "epsilon": float(epsilon),
        "epsilon_cumulative": float(epsilon_cumulative), "delta": float(policy.target_delta),
        "policy": {name: float(getattr(policy, name)) for name in POLICY_FIELDS},
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_RELEASE_CHECKS: dict[str, tuple[Any, str]] = {
    "site_id": (_text, "a non-empty string"),
    "run_id": (_text, "a non-empty string"),
    "round": (_integer, "an integer >= 0 (0 for a local run)"),
    "time": (lambda v: isinstance(v, str) and bool(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", v)), "a UTC ISO 8601 time"),
    "kind": (lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
    "update_sha256": (lambda v: isinstance(v, str) and bool(_SHA256_RE.match(v)), "64 lower-case hex digits"),
    "privacy_unit": (lambda v: v == PRIVACY_UNIT, f"'{PRIVACY_UNIT}'"),
    "neighbouring_relation": (_text, "a non-empty string"),
    "noise_multiplier": (lambda v: _number(v) and v > 0, "a number > 0"),
    "sample_rate": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "steps": (_integer, "an integer >= 0"),
    "clipping_norm": (lambda v: _number(v) and v > 0, "a number > 0"),
    "accountant": (_text, f"a non-empty string such as '{ACCOUNTANT_PRV}'"),
    "epsilon": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "epsilon_cumulative": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "delta": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "policy": (lambda v: isinstance(v, dict) and set(v) == set(POLICY_FIELDS) and all(_number(x) for x in v.values()),
               f"an object with numbers {', '.join(POLICY_FIELDS)}"),
}


def _distributed_ok(v: Any) -> bool:
    return (isinstance(v, dict) and set(v) == {"sites", "colluders", "site_noise_multiplier"}
            and _integer(v["sites"]) and v["sites"] >= 2 and _integer(v["colluders"]) and v["sites"] - v["colluders"] >= 1
            and _number(v["site_noise_multiplier"]) and v["site_noise_multiplier"] > 0)


def distributed_terms(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A release's well-formed distributed-DP terms, or None (a local-DP release, or malformed terms)."""
    terms = entry.get(DISTRIBUTED_FIELD)
    return terms if _distributed_ok(terms) else None


def release_field_errors(fields: dict[str, Any]) -> list[str]:
    """What is wrong with a dict of release fields (empty when nothing is)."""
    errors = [f"'{name}' is missing" for name in RELEASE_FIELDS if name not in fields]
    errors += [f"'{name}' must be {want} (got {fields[name]!r})"
               for name, (ok, want) in _RELEASE_CHECKS.items() if name in fields and not ok(fields[name])]
    if DISTRIBUTED_FIELD in fields and not _distributed_ok(fields[DISTRIBUTED_FIELD]):
        errors.append(f"'{DISTRIBUTED_FIELD}' must be an object with sites >= 2, colluders < sites and "
                      f"site_noise_multiplier > 0 (got {fields[DISTRIBUTED_FIELD]!r})")
    return errors


# --- reading ---------------------------------------------------------------
@dataclass(frozen=True)
class LedgerLine:
    """One complete line of a ledger file: its parsed entry, or why it could not be parsed."""

    number: int  # 1-based line number in the file
    entry: dict[str, Any] | None
    error: str | None = None
    # the line is exactly its entry's canonical JSON (so no two JSON parsers can read it differently)
    canonical: bool = True


@dataclass(frozen=True)
class LedgerScan:
    """A ledger file split into complete lines, plus the torn last line (no newline) if there is one."""

    lines: list[LedgerLine]
    torn_line: int | None
    torn_bytes: int

    @property
    def parsed(self) -> list[LedgerLine]:
        """The lines that hold a JSON object, in file order."""
        return [line for line in self.lines if line.entry is not None]


def read_ledger_bytes(path: Path) -> bytes:
    """The ledger file's bytes; LedgerError when it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise LedgerError(f"ledger {path} is missing",
                          "give the site's ledger.jsonl (made by `semiofed site init`), or check the path") from None
    except OSError as exc:
        raise LedgerError(f"ledger {path} is unreadable ({exc})", "check the path and permissions") from exc


def scan_bytes(data: bytes) -> LedgerScan:
    """Split a ledger's bytes into lines and parse each, without judging them."""
    pieces = data.split(b"\n")
    tail = pieces.pop()  # b"" when the file ends with a newline
    lines = []
    for number, raw in enumerate(pieces, start=1):
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            lines.append(LedgerLine(number, None, f"not valid JSON ({exc.__class__.__name__})"))
            continue
        if not isinstance(entry, dict):
            lines.append(LedgerLine(number, None, "not a JSON object"))
            continue
        try:
            canonical = canonical_bytes(entry) == raw
        except ValueError:  # NaN or Infinity
            canonical = False
        lines.append(LedgerLine(number, entry, canonical=canonical))
    return LedgerScan(lines, len(pieces) + 1 if tail else None, len(tail))


def scan_ledger(path: Path) -> LedgerScan:
    """Read and split a ledger file without judging it (LedgerError only if it cannot be read)."""
    return scan_bytes(read_ledger_bytes(path))


def read_entries_cached(path: Path) -> tuple[dict[str, Any], ...]:
    """`read_entries`, parsed once per version of the file (its size and modification time): a site asks for its
    ledger's releases several times per message. The entries are shared: read them, do not change them."""
    stat = Path(path).stat()
    return _entries_of_version(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _entries_of_version(path: str, size: int, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    return tuple(read_entries(Path(path)))


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry of a ledger, in file order; raise LedgerError on a torn or unparsable line (no signature check)."""
    scan = scan_ledger(path)
    if scan.torn_line is not None:
        raise LedgerError(f"ledger {path} ends with an incomplete line {scan.torn_line} (an interrupted append)",
                          f"run `semiofed audit verify --ledger {path} --site-key SITE_KEY.pub` and see docs/privacy.md")
    bad = [line for line in scan.lines if line.entry is None]
    if bad:
        raise LedgerError(f"ledger {path} line {bad[0].number} is {bad[0].error}",
                          "restore the ledger from backup; run `semiofed audit verify` to see every problem")
    return [line.entry for line in scan.parsed]  # type: ignore[misc]


# --- verification of the chain -----------------------------------------------
@dataclass(frozen=True)
class LedgerProblem:
    """One thing wrong with a ledger: where (line, seq), what kind, and the detail."""

    kind: str
    detail: str
    line: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line else []
        where += [f"seq {self.seq}"] if self.seq is not None else []
        return f"{' '.join(where) + ': ' if where else ''}{self.kind}: {self.detail}"


def seq_of(entry: dict[str, Any]) -> int | None:
    """The entry's sequence number, or None when it has no valid one."""
    seq = entry.get("seq")
    return seq if _integer(seq) else None


def chain_problems(scan: LedgerScan, public_key: PublicKey) -> list[LedgerProblem]:
    """Everything wrong with a ledger's form, sequence, hash chain and signatures (its epsilon is checked elsewhere)."""
    problems: list[LedgerProblem] = []
    fingerprint = public_key_fingerprint(public_key)
    parsed = [(line, seq_of(line.entry)) for line in scan.parsed]  # type: ignore[arg-type]
    by_seq: dict[int, dict[str, Any]] = {}
    for line, seq in parsed:
        if seq is not None:
            by_seq.setdefault(seq, line.entry)  # type: ignore[arg-type]
    site_id = next((line.entry.get("site_id") for line, _ in parsed), None)  # type: ignore[union-attr]
    remaining = Counter(seq for _, seq in parsed if seq is not None)  # seqs still to come, for gap vs reorder
    seen: set[int] = set()
    highest = -1
    for line in scan.lines:
        entry = line.entry
        if entry is None:
            problems.append(LedgerProblem(MALFORMED, f"the line is {line.error}", line.number))
            continue
        seq = seq_of(entry)
        add = lambda kind, detail: problems.append(LedgerProblem(kind, detail, line.number, seq))  # noqa: E731
        errors = _form_errors(entry)
        if not line.canonical:
            errors.append("the line is not the entry's canonical JSON (sorted keys, no spaces, no duplicate keys)")
        if errors:
            add(MALFORMED, "; ".join(errors))
        if site_id is not None and entry.get("site_id") != site_id:
            add(SITE_MISMATCH, f"site_id {entry.get('site_id')!r}, the ledger's first entry has {site_id!r}")
        stored = entry.get("entry_hash")
        if isinstance(stored, str) and _SHA256_RE.match(stored):
            try:
                recomputed = entry_hash(entry)
            except (TypeError, ValueError):
                recomputed = None
            if recomputed != stored:
                add(TAMPERED, "its content does not match its entry_hash: the entry was changed after it was signed")
            elif not verify_digest(public_key, ENTRY_CONTEXT, stored, str(entry.get("signature", ""))):
                add(BAD_SIGNATURE, f"the signature does not verify with the site key {fingerprint}: "
                                   "signed by another key, or the signature was altered")
        if seq is None:
            continue
        remaining[seq] -= 1
        if seq in seen:
            add(DUPLICATE, f"seq {seq} appears again: an entry was replayed or the ledger was spliced")
        elif seq < highest:
            add(REORDERED, f"seq {seq} comes after seq {highest}: entries are out of order")
        elif seq > highest + 1:
            later = sorted(s for s, n in remaining.items() if n > 0 and highest < s < seq)
            if later:
                add(REORDERED, f"seq {seq} comes before seq {', '.join(map(str, later))}: entries are out of order")
            gone = seq - highest - 1 - len(later)
            if gone:
                what = f"seq {span(highest + 1, seq - 1)}" if not later else f"{gone} sequence number(s) below {seq}"
                add(GAP, f"{what} {'is' if gone == 1 and not later else 'are'} missing before it: entries were removed")
        seen.add(seq)
        highest = max(highest, seq)
        expected = GENESIS_HASH if seq == 0 else (by_seq[seq - 1].get("entry_hash") if seq - 1 in by_seq else None)
        if expected is not None and entry.get("prev_hash") != expected:
            add(BROKEN_LINK, f"prev_hash does not match the entry_hash of {'seq ' + str(seq - 1) if seq else 'the genesis'}"
                             ": the ledger was spliced or forked")
    if scan.torn_line is not None:
        problems.append(LedgerProblem(TORN, f"the last line is incomplete ({scan.torn_bytes} bytes, no newline): an append was "
                                            "interrupted; the entries before it are checked, these bytes are not an entry",
                                      scan.torn_line))
    return problems


def span(first: int, last: int) -> str:
    """A run of sequence numbers as text: `4` or `4-7`."""
    return str(first) if first == last else f"{first}-{last}"


def _form_errors(entry: dict[str, Any]) -> list[str]:
    errors = release_field_errors({k: v for k, v in entry.items() if k in RELEASE_FIELDS + (DISTRIBUTED_FIELD,)})
    errors += [f"'{name}' is missing" for name in CHAIN_FIELDS + SEAL_FIELDS if name not in entry]
    unknown = sorted(set(entry) - set(RELEASE_FIELDS + (DISTRIBUTED_FIELD,) + CHAIN_FIELDS + SEAL_FIELDS))
    errors += [f"unknown fields {unknown}"] if unknown else []
    if entry.get("ledger_version", LEDGER_VERSION) != LEDGER_VERSION:
        errors.append(f"ledger_version {entry.get('ledger_version')!r}, this semiofed reads {LEDGER_VERSION}")
    return errors


# --- the signed head (signed in ledger_writer.py) ------------------------------
def verify_head(head: Any, public_key: PublicKey) -> bool:
    """True when `head` is well formed and signed by `public_key`; False for anything else."""
    if not isinstance(head, dict) or set(head) != set(HEAD_FIELDS + ("signature",)):
        return False
    if head.get("ledger_version") != LEDGER_VERSION or not isinstance(head.get("seq"), int) or head["seq"] < -1:
        return False
    try:
        body = canonical_bytes({k: v for k, v in head.items() if k != "signature"})
    except (TypeError, ValueError):
        return False
    return verify_digest(public_key, HEAD_CONTEXT, hashlib.sha256(body).hexdigest(), str(head["signature"]))


__all__ = [
    "LedgerError", "LedgerProblem", "LedgerScan", "LedgerLine", "read_entries", "scan_ledger", "scan_bytes",
    "read_ledger_bytes", "verify_head", "chain_problems", "release_fields", "release_field_errors", "entry_hash",
    "distributed_terms",
    "canonical_bytes", "GENESIS_HASH", "KIND_LOCAL", "KIND_FEDERATED", "KIND_EVALUATION", "ACCOUNTANT_PRV",
]
