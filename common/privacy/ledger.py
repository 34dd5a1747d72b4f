"""The site's privacy ledger: one signed, hash-chained JSON line per DP release; append, read, sign a head, check the chain.

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

Appends are serialised with an exclusive lock, fsync'd, and refused when the
existing ledger does not verify against the signing key's own public key.
The auditor's full check (epsilon recomputed independently) is
`common/audit/verify.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiofed.common.errors import SemiofedError
from semiofed.common.files import fsync_dir
from semiofed.common.privacy.keys import (
    PrivateKey,
    PublicKey,
    load_public_key,
    load_site_private_key,
    public_key_fingerprint,
    sign_digest,
    verify_digest,
)
from semiofed.common.privacy.policy import NEIGHBOURING_RELATION, PRIVACY_UNIT, PrivacyPolicy

LEDGER_VERSION = 1
GENESIS_HASH = "0" * 64
ENTRY_CONTEXT = b"semiofed-ledger-entry-v1\x00"
HEAD_CONTEXT = b"semiofed-ledger-head-v1\x00"
ACCOUNTANT_PRV = "opacus-prv"
KIND_LOCAL = "local"
KIND_FEDERATED = "federated"
KINDS = (KIND_LOCAL, KIND_FEDERATED)
HEAD_MAX_BYTES = 1024  # a head travels with every round's metrics

POLICY_FIELDS = ("max_epsilon", "target_delta", "min_noise_multiplier", "clipping_norm")
RELEASE_FIELDS = (
    "site_id", "run_id", "round", "time", "kind", "update_sha256",
    "privacy_unit", "neighbouring_relation", "noise_multiplier", "sample_rate", "steps", "clipping_norm",
    "accountant", "epsilon", "epsilon_cumulative", "delta", "policy",
)
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


# --- canonical form, hashing, sealing -------------------------------------
def canonical_bytes(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """Hex sha256 of an entry's canonical JSON without `entry_hash` and `signature`."""
    return hashlib.sha256(canonical_bytes({k: v for k, v in entry.items() if k not in SEAL_FIELDS})).hexdigest()


def seal(entry: dict[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """Return `entry` with its `entry_hash` and the key's `signature` over it."""
    body = {k: v for k, v in entry.items() if k not in SEAL_FIELDS}
    digest = entry_hash(body)
    return body | {"entry_hash": digest, "signature": sign_digest(private_key, ENTRY_CONTEXT, digest)}


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
) -> dict[str, Any]:
    """The fields of one DP release, ready for `append_entry` (time is now; delta is the policy's)."""
    return {
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


def release_field_errors(fields: dict[str, Any]) -> list[str]:
    """What is wrong with a dict of release fields (empty when nothing is)."""
    errors = [f"'{name}' is missing" for name in RELEASE_FIELDS if name not in fields]
    errors += [f"'{name}' must be {want} (got {fields[name]!r})"
               for name, (ok, want) in _RELEASE_CHECKS.items() if name in fields and not ok(fields[name])]
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


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise LedgerError(f"ledger {path} is missing",
                          "give the site's ledger.jsonl (made by `semiofed site init`), or check the path") from None
    except OSError as exc:
        raise LedgerError(f"ledger {path} is unreadable ({exc})", "check the path and permissions") from exc


def _scan(data: bytes) -> LedgerScan:
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
    return _scan(_read_bytes(path))


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
    errors = release_field_errors({k: v for k, v in entry.items() if k in RELEASE_FIELDS})
    errors += [f"'{name}' is missing" for name in CHAIN_FIELDS + SEAL_FIELDS if name not in entry]
    unknown = sorted(set(entry) - set(RELEASE_FIELDS + CHAIN_FIELDS + SEAL_FIELDS))
    errors += [f"unknown fields {unknown}"] if unknown else []
    if entry.get("ledger_version", LEDGER_VERSION) != LEDGER_VERSION:
        errors.append(f"ledger_version {entry.get('ledger_version')!r}, this semiofed reads {LEDGER_VERSION}")
    return errors


def _check_appendable(path: Path, data: bytes, public_key: PublicKey) -> list[dict[str, Any]]:
    scan = _scan(data)
    problems = chain_problems(scan, public_key)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        fix = (f"see every problem with `semiofed audit verify --ledger {path} --site-key SITE_KEY.pub`; "
               + ("an interrupted append left a torn last line: keep a copy of the ledger for the auditor, then remove "
                  "the bytes after its last newline" if problems[0].kind == TORN and len(problems) == 1
                  else "restore the ledger from backup; never edit entries by hand"))
        raise LedgerError(f"ledger {path} does not verify with this site's key: {problems[0]}{more}", fix)
    return [line.entry for line in scan.parsed]  # type: ignore[misc]


def check_appendable(path: Path, public_key: PublicKey) -> list[dict[str, Any]]:
    """The ledger's entries when the next append would be accepted; else LedgerError naming the first problem.

    A missing file is an empty ledger. Run it before a release is computed, so
    that a broken ledger stops the work before it starts, not after.
    """
    path = Path(path)
    return _check_appendable(path, _read_bytes(path) if path.exists() else b"", public_key)


def append_entry(path: Path, fields: dict[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """Seal `fields` as the ledger's next entry and append it durably; return the entry written.

    Refused (LedgerError) when the fields are invalid, when the existing
    ledger does not verify against the key's own public key (including a torn
    last line), or when it belongs to another site.
    """
    path = Path(path)
    errors = release_field_errors(fields)
    unknown = sorted(set(fields) - set(RELEASE_FIELDS))
    errors += [f"unknown fields {unknown}"] if unknown else []
    if errors:
        raise LedgerError(f"ledger entry for {path} is invalid: {'; '.join(errors)}",
                          f"give exactly the fields {', '.join(RELEASE_FIELDS)} (see `release_fields`)")
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"ledger {path} cannot be opened for appending ({exc})",
                          "check that the site directory exists and is writable") from exc
    with os.fdopen(fd, "r+b") as stream:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)  # one writer at a time; released on close
        entries = _check_appendable(path, stream.read(), private_key.public_key())
        last = entries[-1] if entries else None
        if last is not None and last["site_id"] != fields["site_id"]:
            raise LedgerError(f"ledger {path} belongs to site {last['site_id']!r}, not {fields['site_id']!r}",
                              "append to the ledger of the site that made the release")
        entry = seal({**fields, "ledger_version": LEDGER_VERSION, "seq": last["seq"] + 1 if last else 0,
                      "prev_hash": last["entry_hash"] if last else GENESIS_HASH}, private_key)
        stream.write(canonical_bytes(entry) + b"\n")
        stream.flush()
        os.fsync(stream.fileno())
    if created:
        fsync_dir(path.parent)
    return entry


# --- the signed head ---------------------------------------------------------
def ledger_head(path: Path, private_key: PrivateKey, site_id: str, *, policy: PrivacyPolicy | None = None) -> dict[str, Any]:
    """A compact signed summary of the ledger's last entry, to send with round metrics (<= 1024 bytes of JSON).

    `epsilon_max` and `delta` come from `policy` when given (the policy in
    force now), else from the last entry; an empty ledger has seq -1.
    """
    entries = _check_appendable(Path(path), _read_bytes(path), private_key.public_key())
    last = entries[-1] if entries else None
    if last is not None and last["site_id"] != site_id:
        raise LedgerError(f"ledger {path} belongs to site {last['site_id']!r}, not {site_id!r}", "give this site's own ledger")
    head = {
        "ledger_version": LEDGER_VERSION,
        "site_id": site_id,
        "seq": last["seq"] if last else -1,
        "entry_hash": last["entry_hash"] if last else GENESIS_HASH,
        "epsilon_cumulative": last["epsilon_cumulative"] if last else 0.0,
        "epsilon_max": policy.max_epsilon if policy else (last["policy"]["max_epsilon"] if last else None),
        "delta": policy.target_delta if policy else (last["delta"] if last else None),
        "time": utc_now(),
    }
    head["signature"] = sign_digest(private_key, HEAD_CONTEXT, hashlib.sha256(canonical_bytes(head)).hexdigest())
    if len(canonical_bytes(head)) > HEAD_MAX_BYTES:
        raise LedgerError(f"ledger head of {path} is longer than {HEAD_MAX_BYTES} bytes", "use a shorter site id")
    return head


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
    "LedgerError", "LedgerProblem", "LedgerScan", "LedgerLine", "append_entry", "check_appendable", "read_entries",
    "scan_ledger", "ledger_head", "verify_head", "chain_problems", "release_fields", "release_field_errors", "seal",
    "entry_hash", "canonical_bytes", "load_site_private_key", "load_public_key", "GENESIS_HASH", "KIND_LOCAL",
    "KIND_FEDERATED", "ACCOUNTANT_PRV",
]
