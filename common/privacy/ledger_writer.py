"""Writing a site's privacy ledger with its private key: seal and append an entry durably, sign the head sent each round.

The entry format, reading and the chain check are in `ledger.py`; an append
is refused unless the existing ledger passes that check with the signing
key's own public key.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

from semiofed.common.files import fsync_dir
from semiofed.common.privacy.keys import PrivateKey, PublicKey, sign_digest
from semiofed.common.privacy.ledger import (
    ENTRY_CONTEXT,
    GENESIS_HASH,
    HEAD_CONTEXT,
    LEDGER_VERSION,
    RELEASE_FIELDS,
    SEAL_FIELDS,
    TORN,
    LedgerError,
    canonical_bytes,
    chain_problems,
    entry_hash,
    read_ledger_bytes,
    release_field_errors,
    DISTRIBUTED_FIELD,
    scan_bytes,
    utc_now,
)
from semiofed.common.privacy.policy import PrivacyPolicy

HEAD_MAX_BYTES = 1024  # a head travels with every round's metrics


def seal(entry: dict[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """Return `entry` with its `entry_hash` and the key's `signature` over it."""
    body = {k: v for k, v in entry.items() if k not in SEAL_FIELDS}
    digest = entry_hash(body)
    return body | {"entry_hash": digest, "signature": sign_digest(private_key, ENTRY_CONTEXT, digest)}


def _check_appendable(path: Path, data: bytes, public_key: PublicKey) -> list[dict[str, Any]]:
    scan = scan_bytes(data)
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
    return _check_appendable(path, read_ledger_bytes(path) if path.exists() else b"", public_key)


def append_entry(path: Path, fields: dict[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """Seal `fields` as the ledger's next entry and append it durably; return the entry written.

    Refused (LedgerError) when the fields are invalid, when the existing
    ledger does not verify against the key's own public key (including a torn
    last line), or when it belongs to another site.
    """
    path = Path(path)
    errors = release_field_errors(fields)
    unknown = sorted(set(fields) - set(RELEASE_FIELDS + (DISTRIBUTED_FIELD,)))
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


def ledger_head(path: Path, private_key: PrivateKey, site_id: str, *, policy: PrivacyPolicy | None = None) -> dict[str, Any]:
    """A compact signed summary of the ledger's last entry, to send with round metrics (<= 1024 bytes of JSON).

    `epsilon_max` and `delta` come from `policy` when given (the policy in
    force now), else from the last entry; an empty ledger has seq -1. The
    receiver checks it with `ledger.verify_head`.
    """
    entries = _check_appendable(Path(path), read_ledger_bytes(path), private_key.public_key())
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


__all__ = ["HEAD_MAX_BYTES", "append_entry", "check_appendable", "ledger_head", "seal"]
