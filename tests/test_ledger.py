"""The privacy ledger: signed hash chain, every kind of damage detected and named, epsilon checked independently."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from semiofed.common.privacy import ledger as L
from semiofed.common.privacy import ledger_writer as W
from semiofed.common.privacy.keys import KeyFileError, load_public_key, load_site_private_key, public_key_fingerprint
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.privacy.accountant import EPS_ERROR, _epsilon_of

POLICY = PrivacyPolicy(max_epsilon=50.0)
SIGMA, Q, STEPS = 1.0, 0.1, 20  # one release: epsilon ~3.6 at delta 1e-5
N_ENTRIES = 4


def _write_keys(directory: Path, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """The key files as `semiofed site init` writes them (PKCS8 PEM, OpenSSH public)."""
    directory.mkdir(parents=True, exist_ok=True)
    pem, pub = directory / "site_key.pem", directory / "site_key.pub"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return pem, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The site's key pair loaded from real files, and a foreign key."""
    pem, pub = _write_keys(tmp_path_factory.mktemp("keys"), ec.generate_private_key(ec.SECP384R1()))
    return load_site_private_key(pem), load_public_key(pub), ec.generate_private_key(ec.SECP384R1())


def fields(run: int, *, sigma: float = SIGMA, q: float = Q, steps: int = STEPS, epsilon: float, cumulative: float,
           site_id: str = "site-a", policy: PrivacyPolicy = POLICY) -> dict:
    return L.release_fields(site_id=site_id, run_id=f"run-{run}", round=0, kind=L.KIND_LOCAL,
                            update_sha256=hashlib.sha256(f"weights {run}".encode()).hexdigest(), noise_multiplier=sigma,
                            sample_rate=q, steps=steps, clipping_norm=1.0, epsilon=epsilon, epsilon_cumulative=cumulative,
                            policy=policy)


@pytest.fixture(scope="module")
def honest(keys, tmp_path_factory) -> bytes:
    """The bytes of an honest 4-entry ledger, epsilon from the site's accountant (Opacus PRV)."""
    private, _, _ = keys
    path = tmp_path_factory.mktemp("honest") / "ledger.jsonl"
    delta = POLICY.target_delta
    for run in range(N_ENTRIES):
        W.append_entry(path, fields(run, epsilon=_epsilon_of([(SIGMA, Q, STEPS)], delta),
                                    cumulative=_epsilon_of([(SIGMA, Q, STEPS * (run + 1))], delta)), private)
    return path.read_bytes()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def kinds(verification) -> set[tuple[int | None, str]]:
    return {(p.seq, p.kind) for p in verification.problems}


# --- format ------------------------------------------------------------------
def test_entries_are_canonical_chained_and_signed_as_documented(ledger, keys):
    private, public, _ = keys
    entries = L.read_entries(ledger)
    assert [e["seq"] for e in entries] == list(range(N_ENTRIES))
    assert entries[0]["prev_hash"] == L.GENESIS_HASH
    for line, entry, previous in zip(lines_of(ledger), entries, [None] + entries[:-1]):
        # one line = the entry's canonical JSON, recomputed here without semiofed's helpers
        assert line == json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        body = {k: v for k, v in entry.items() if k not in ("entry_hash", "signature")}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        assert entry["entry_hash"] == digest
        public.verify(base64.b64decode(entry["signature"]), L.ENTRY_CONTEXT + bytes.fromhex(digest), ec.ECDSA(hashes.SHA384()))
        if previous:
            assert entry["prev_hash"] == previous["entry_hash"]
    first = entries[0]
    assert first["privacy_unit"] == "patient" and first["accountant"] == "opacus-prv" and first["kind"] == "local"
    assert first["policy"] == {"max_epsilon": 50.0, "target_delta": 1e-5, "min_noise_multiplier": 0.8, "clipping_norm": 1.0}
    assert os.stat(ledger).st_mode & 0o777 in (0o600, 0o644)


def test_an_honest_ledger_verifies_with_epsilon_recomputed(ledger, keys):
    result = verify_ledger(ledger, keys[1])
    assert result.ok, [str(p) for p in result.problems]
    assert result.site_id == "site-a" and len(result.entries) == N_ENTRIES
    assert result.key_fingerprint == public_key_fingerprint(keys[1]).strip() and result.key_fingerprint.startswith("SHA256:")
    for row in result.entries:
        assert row.epsilon_recomputed == pytest.approx(row.epsilon, rel=0.01, abs=EPS_ERROR)
        assert row.epsilon_cumulative_recomputed == pytest.approx(row.epsilon_cumulative, rel=0.01, abs=EPS_ERROR)


# --- damage, each detected and named -------------------------------------------
@pytest.mark.parametrize("old,new", [(b'"run_id":"run-1"', b'"run_id":"run-7"'), (b'"steps":20', b'"steps":10')])
def test_one_changed_byte_is_named_tampered(ledger, keys, old, new):
    lines = lines_of(ledger)
    assert old in lines[1] and len(old) == len(new)
    lines[1] = lines[1].replace(old, new)
    ledger.write_bytes(b"".join(lines))
    result = verify_ledger(ledger, keys[1])
    assert (1, L.TAMPERED) in kinds(result)
    assert all(p.seq == 1 for p in result.problems), [str(p) for p in result.problems]
    assert "line 2 seq 1: tampered" in str(result.problems[0])


def test_a_dropped_entry_is_a_gap(ledger, keys):
    lines = lines_of(ledger)
    ledger.write_bytes(b"".join(lines[:1] + lines[2:]))
    result = verify_ledger(ledger, keys[1])
    assert kinds(result) == {(2, L.GAP)}
    assert "seq 1 is missing" in result.problems[0].detail


def test_two_swapped_entries_are_reordered(ledger, keys):
    lines = lines_of(ledger)
    lines[1], lines[2] = lines[2], lines[1]
    ledger.write_bytes(b"".join(lines))
    result = verify_ledger(ledger, keys[1])
    assert kinds(result) == {(2, L.REORDERED), (1, L.REORDERED)}


def test_a_replayed_entry_is_a_duplicate(ledger, keys):
    ledger.write_bytes(ledger.read_bytes() + lines_of(ledger)[1])
    assert kinds(verify_ledger(ledger, keys[1])) == {(1, L.DUPLICATE)}


def test_a_line_two_json_parsers_would_read_differently_is_malformed(ledger, keys):
    """A duplicate key: Python keeps the last value (the signed one), other parsers may show the first."""
    lines = lines_of(ledger)
    lines[1] = b'{"epsilon":0.001,' + lines[1][1:]
    ledger.write_bytes(b"".join(lines))
    result = verify_ledger(ledger, keys[1])
    assert kinds(result) == {(1, L.MALFORMED)} and "canonical JSON" in result.problems[0].detail


def test_an_entry_signed_by_another_key_is_named(ledger, keys):
    _, public, foreign = keys
    lines = lines_of(ledger)
    forged = json.loads(lines[2]) | {"update_sha256": "f" * 64}
    lines[2] = L.canonical_bytes(W.seal(forged, foreign)) + b"\n"
    lines[3] = L.canonical_bytes(W.seal(json.loads(lines[3]) | {"prev_hash": L.entry_hash(forged)}, foreign)) + b"\n"
    ledger.write_bytes(b"".join(lines))
    result = verify_ledger(ledger, public)
    assert kinds(result) == {(2, L.BAD_SIGNATURE), (3, L.BAD_SIGNATURE)}
    # the same ledger checked with the wrong site key: nothing verifies
    assert {k for _, k in kinds(verify_ledger(ledger, foreign.public_key()))} == {L.BAD_SIGNATURE}


def test_a_torn_last_line_is_reported_and_the_entries_before_it_verify(ledger, keys):
    """What a crash during append leaves: part of a line, no newline."""
    private, public, _ = keys
    whole = L.canonical_bytes(W.seal(json.loads(lines_of(ledger)[-1]) | {"seq": N_ENTRIES}, private))
    ledger.write_bytes(ledger.read_bytes() + whole[: len(whole) // 2])
    result = verify_ledger(ledger, public)
    assert [(p.line, p.kind) for p in result.problems] == [(N_ENTRIES + 1, L.TORN)]
    assert len(result.entries) == N_ENTRIES and all(row.ok for row in result.entries)
    with pytest.raises(L.LedgerError, match="incomplete line 5"):
        L.read_entries(ledger)


def test_entries_cut_off_the_end_are_caught_with_a_signed_head(ledger, keys):
    private, public, _ = keys
    head = W.ledger_head(ledger, private, "site-a")
    ledger.write_bytes(b"".join(lines_of(ledger)[:-1]))
    assert verify_ledger(ledger, public).ok  # a clean cut at a line end cannot be seen from the ledger alone
    result = verify_ledger(ledger, public, head=head)
    assert [p.kind for p in result.problems] == [L.TRUNCATED]
    assert "seq 3 were cut off" in result.problems[0].detail


def test_under_reported_epsilon_is_flagged_against_the_independent_accountant(ledger, keys):
    private, public, _ = keys
    honest = _epsilon_of([(SIGMA, Q, STEPS)], POLICY.target_delta)
    cumulative = _epsilon_of([(SIGMA, Q, STEPS * (N_ENTRIES + 1))], POLICY.target_delta)
    W.append_entry(ledger, fields(9, epsilon=honest * 0.9, cumulative=cumulative), private)  # properly signed, but low
    result = verify_ledger(ledger, public)
    assert kinds(result) == {(N_ENTRIES, L.EPSILON_UNDER_REPORTED)}
    assert result.problems[0].detail.startswith("epsilon ") and "dp-accounting PLD" in result.problems[0].detail


def test_cumulative_epsilon_above_the_budget_is_flagged(tmp_path, keys):
    private, public, _ = keys
    path = tmp_path / "ledger.jsonl"
    tight = PrivacyPolicy(max_epsilon=3.0)
    epsilon = _epsilon_of([(SIGMA, Q, STEPS)], tight.target_delta)
    W.append_entry(path, fields(0, epsilon=epsilon, cumulative=epsilon, policy=tight), private)
    assert kinds(verify_ledger(path, public)) == {(0, L.OVER_BUDGET)}


# --- append refuses what would hide damage ------------------------------------
def test_append_refuses_a_broken_chain_and_leaves_the_file_alone(ledger, keys):
    private = keys[0]
    lines = lines_of(ledger)
    lines[1] = lines[1].replace(b'"run_id":"run-1"', b'"run_id":"run-X"')
    ledger.write_bytes(b"".join(lines))
    before = ledger.read_bytes()
    with pytest.raises(L.LedgerError, match=r"does not verify with this site's key: line 2 seq 1: tampered") as info:
        W.append_entry(ledger, fields(8, epsilon=4.0, cumulative=40.0), private)
    assert "restore the ledger from backup" in str(info.value)
    assert ledger.read_bytes() == before


def test_append_refuses_a_torn_ledger(ledger, keys):
    ledger.write_bytes(ledger.read_bytes() + b'{"seq":4,"site')
    before = ledger.read_bytes()
    with pytest.raises(L.LedgerError, match="torn") as info:
        W.append_entry(ledger, fields(8, epsilon=4.0, cumulative=40.0), keys[0])
    assert "remove the bytes after its last newline" in str(info.value)
    assert ledger.read_bytes() == before


def test_append_refuses_another_sites_ledger_and_invalid_fields(ledger, keys):
    with pytest.raises(L.LedgerError, match="belongs to site 'site-a'"):
        W.append_entry(ledger, fields(8, epsilon=4.0, cumulative=40.0, site_id="site-b"), keys[0])
    bad = fields(8, epsilon=4.0, cumulative=40.0) | {"kind": "central"}
    del bad["steps"]
    with pytest.raises(L.LedgerError, match=r"'steps' is missing; 'kind' must be one of local, federated"):
        W.append_entry(ledger, bad, keys[0])


def test_a_new_ledger_starts_at_genesis(tmp_path, keys):
    path = tmp_path / "new.jsonl"
    entry = W.append_entry(path, fields(0, epsilon=4.0, cumulative=4.0), keys[0])
    assert entry["seq"] == 0 and entry["prev_hash"] == L.GENESIS_HASH and path.read_bytes().count(b"\n") == 1
    assert os.stat(path).st_mode & 0o777 == 0o600


# --- the signed head ----------------------------------------------------------
def test_the_head_is_small_signed_and_checked(ledger, tmp_path, keys):
    private, public, foreign = keys
    head = W.ledger_head(ledger, private, "site-a", policy=POLICY)
    assert len(json.dumps(head).encode()) <= 1024
    assert head["seq"] == N_ENTRIES - 1 and head["entry_hash"] == L.read_entries(ledger)[-1]["entry_hash"]
    assert head["epsilon_max"] == 50.0 and head["delta"] == 1e-5
    assert L.verify_head(head, public)
    assert not L.verify_head(head | {"epsilon_cumulative": 0.1}, public)
    assert not L.verify_head(head, foreign.public_key())
    assert not L.verify_head({"seq": 1}, public)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    head = W.ledger_head(empty, private, "site-a", policy=POLICY)
    assert head["seq"] == -1 and head["epsilon_cumulative"] == 0.0 and L.verify_head(head, public)


# --- keys ---------------------------------------------------------------------
def test_public_keys_load_from_a_path_bytes_or_text_and_other_curves_are_refused(tmp_path, keys):
    _, pub_path = _write_keys(tmp_path / "k", ec.generate_private_key(ec.SECP384R1()))
    text = pub_path.read_text()
    assert load_public_key(pub_path) == load_public_key(text) == load_public_key(text.encode())
    _, p256 = _write_keys(tmp_path / "p256", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KeyFileError, match="not an ECDSA P-384 key"):
        load_public_key(p256)
    with pytest.raises(KeyFileError, match="is missing"):
        load_public_key(tmp_path / "nope.pub")


# --- agreement of the two accountants ------------------------------------------
def test_site_epsilon_matches_the_independent_accountant_on_20_random_parameter_sets(tmp_path, keys):
    """Opacus PRV (site) against dp-accounting PLD (auditor): 10 ledgers x 2 releases, random (sigma, q, steps)."""
    private, public, _ = keys
    rng = np.random.default_rng(2024)
    delta = POLICY.target_delta
    checked = 0
    for site in range(10):
        path = tmp_path / f"site{site}.jsonl"
        history = []
        for run in range(2):
            sigma, q = round(float(rng.uniform(0.8, 2.5)), 3), round(float(rng.uniform(0.02, 0.25)), 3)
            history.append((sigma, q, int(rng.integers(5, 60))))
            W.append_entry(path, fields(run, sigma=sigma, q=q, steps=history[-1][2], epsilon=_epsilon_of(history[-1:], delta),
                                        cumulative=_epsilon_of(history, delta)), private)
        result = verify_ledger(path, public)
        assert result.ok, [str(p) for p in result.problems]
        for row in result.entries:
            for reported, recomputed in ((row.epsilon, row.epsilon_recomputed),
                                         (row.epsilon_cumulative, row.epsilon_cumulative_recomputed)):
                # PRV is an upper bound with absolute error EPS_ERROR; PLD is tight: within 1% (+ PRV's error)
                assert recomputed * 0.99 <= reported <= recomputed * 1.01 + EPS_ERROR
                checked += 1
    assert checked == 40


def test_the_auditor_never_imports_opacus_or_torch(ledger, keys, tmp_path):
    pub = tmp_path / "site.pub"
    pub.write_bytes(keys[1].public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    code = ("import sys; from semiofed.common.privacy.keys import load_public_key; "
            "from semiofed.common.audit.verify import verify_ledger; "
            f"assert verify_ledger({str(ledger)!r}, load_public_key({str(pub)!r})).ok; "
            "print(sorted(m for m in ('opacus', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
