"""Attacks on the privacy ledger and the site policy that docs/privacy.md says are caught: each is tried and must be named.

Every forged entry here is validly signed by the site's own key (a site that
re-signs, or a stolen key), so only the check under test can catch it.
Releases are one Gaussian step (q = 1), which the auditor's PLD accountant
composes exactly and fast; reported epsilons are the auditor's own values,
so an honest entry raises no epsilon problem.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from semiofed.cli import audit_cmd
from semiofed.client.site import init_site, tighten_policy
from semiofed.common.audit.pld import release_epsilon
from semiofed.common.audit.verify import verify_ledger
from semiofed.common.errors import SiteError
from semiofed.common.privacy import ledger as L
from semiofed.common.privacy import ledger_writer as W
from semiofed.common.privacy.keys import sign_digest, verify_digest
from semiofed.common.privacy.policy import PrivacyPolicy

SITE = "site-a"
POLICY = PrivacyPolicy(max_epsilon=50.0)  # min_noise_multiplier 0.8, target_delta 1e-5
DELTA = POLICY.target_delta
SIGMA = 2.0  # each release: one Gaussian step at sigma 2 (q = 1)
N_ENTRIES = 4


def epsilon_after(n: int, sigma: float = SIGMA, delta: float = DELTA) -> float:
    """The auditor's epsilon of n Gaussian releases at sigma (they compose exactly: sigma / sqrt(n))."""
    return release_epsilon(sigma / math.sqrt(n), 1.0, 1, delta)


def fields(run: str, n: int, *, site_id: str = SITE, sigma: float = SIGMA, policy: PrivacyPolicy = POLICY) -> dict:
    """Honest release fields of the site's n-th release (n = 1, 2, ...), every release before it at SIGMA."""
    cumulative = release_epsilon((1 / ((n - 1) / SIGMA**2 + 1 / sigma**2)) ** 0.5, 1.0, 1, policy.target_delta)
    return L.release_fields(site_id=site_id, run_id=run, round=0, kind=L.KIND_LOCAL,
                            update_sha256=hashlib.sha256(run.encode()).hexdigest(), noise_multiplier=sigma,
                            sample_rate=1.0, steps=1, clipping_norm=1.0,
                            epsilon=release_epsilon(sigma, 1.0, 1, policy.target_delta), epsilon_cumulative=cumulative,
                            policy=policy)


def forge(body: dict, seq: int, prev_hash: str, key: ec.EllipticCurvePrivateKey) -> dict:
    """An entry sealed by `key` with whatever seq and prev_hash the forger chose (append_entry would refuse it)."""
    return W.seal({k: v for k, v in body.items() if k not in L.SEAL_FIELDS}
                  | {"ledger_version": L.LEDGER_VERSION, "seq": seq, "prev_hash": prev_hash}, key)


def write(path: Path, entries: list[dict]) -> Path:
    path.write_bytes(b"".join(L.canonical_bytes(e) + b"\n" for e in entries))
    return path


def kinds(verification) -> set[tuple[int | None, str]]:
    return {(p.seq, p.kind) for p in verification.problems}


def head_digest(head: dict) -> str:
    return hashlib.sha256(L.canonical_bytes({k: v for k, v in head.items() if k != "signature"})).hexdigest()


@pytest.fixture(scope="module")
def keys():
    """The site's key pair and a foreign key."""
    private = ec.generate_private_key(ec.SECP384R1())
    return private, private.public_key(), ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def honest(keys, tmp_path_factory) -> bytes:
    """The bytes of an honest 4-entry ledger of site-a, appended as the site appends."""
    path = tmp_path_factory.mktemp("honest") / "ledger.jsonl"
    for n in range(1, N_ENTRIES + 1):
        W.append_entry(path, fields(f"run-{n}", n), keys[0])
    return path.read_bytes()


def test_the_honest_ledger_verifies(ledger, keys):
    """Control: the ledger every attack starts from has no problem."""
    result = verify_ledger(ledger, keys[1])
    assert result.ok, [str(p) for p in result.problems]


# --- 1. broken-link: spliced or forked chains, and an entry that differs from the signed head ---------
def test_a_re_signed_fork_from_an_earlier_entry_is_a_broken_link(ledger, keys):
    """Fork: seq 2 re-signed to follow seq 0 (dropping seq 1's release from the history), the rest re-chained onto it."""
    private, public, _ = keys
    entries = L.read_entries(ledger)
    forked = [entries[0], entries[1], forge(entries[2], 2, entries[0]["entry_hash"], private)]
    forked.append(forge(entries[3], 3, forked[2]["entry_hash"], private))
    result = verify_ledger(write(ledger, forked), public)
    assert kinds(result) == {(2, L.BROKEN_LINK)}, [str(p) for p in result.problems]
    assert "spliced or forked" in result.problems[0].detail and result.entries[2].problems == [L.BROKEN_LINK]


def test_two_validly_signed_forks_spliced_together_are_a_broken_link(keys, tmp_path):
    """Splice: the first half of one fork and the second half of another, every entry signed by the site key."""
    private, public, _ = keys
    forks = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    W.append_entry(forks[0], fields("run-1", 1), private)
    forks[1].write_bytes(forks[0].read_bytes())
    for name, path in zip("ab", forks):
        for n in range(2, N_ENTRIES + 1):
            W.append_entry(path, fields(f"run-{n}{name}", n), private)
        assert verify_ledger(path, public).ok  # each fork alone is a valid ledger
    a, b = (L.read_entries(path) for path in forks)
    assert a[1]["entry_hash"] != b[1]["entry_hash"]
    result = verify_ledger(write(tmp_path / "spliced.jsonl", a[:2] + b[2:]), public)
    assert kinds(result) == {(2, L.BROKEN_LINK)}, [str(p) for p in result.problems]


def test_a_first_entry_that_does_not_start_at_genesis_is_a_broken_link(ledger, keys):
    """A ledger renumbered from the tail of another: seq 0 re-signed but still linked to an earlier entry."""
    private, public, _ = keys
    entries = L.read_entries(ledger)
    tail = [forge(entries[2], 0, entries[1]["entry_hash"], private)]
    result = verify_ledger(write(ledger, tail), public)
    assert (0, L.BROKEN_LINK) in kinds(result), [str(p) for p in result.problems]
    assert "genesis" in next(p.detail for p in result.problems if p.kind == L.BROKEN_LINK)


def test_the_last_entry_rewritten_after_the_head_was_signed_is_a_broken_link(ledger, keys):
    """The site signs a head, then re-signs its last entry with another update: only the head can show it."""
    private, public, _ = keys
    head = W.ledger_head(ledger, private, SITE, policy=POLICY)
    entries = L.read_entries(ledger)
    entries[-1] = forge(entries[-1] | {"update_sha256": "e" * 64}, N_ENTRIES - 1, entries[-2]["entry_hash"], private)
    write(ledger, entries)
    assert verify_ledger(ledger, public).ok  # a consistently re-signed ledger verifies on its own
    result = verify_ledger(ledger, public, head=head)
    assert kinds(result) == {(N_ENTRIES - 1, L.BROKEN_LINK)}, [str(p) for p in result.problems]
    assert "differs from the one the site's signed head names" in result.problems[0].detail


def test_history_rewritten_and_re_chained_up_to_the_head_is_a_broken_link(ledger, keys):
    """seq 1 rewritten (less noise spent on paper) and every later entry re-signed: the head still pins the old chain."""
    private, public, _ = keys
    head = W.ledger_head(ledger, private, SITE, policy=POLICY)
    entries = L.read_entries(ledger)
    for seq in range(1, N_ENTRIES):
        body = entries[seq] | ({"run_id": "run-rewritten"} if seq == 1 else {})
        entries[seq] = forge(body, seq, entries[seq - 1]["entry_hash"], private)
    write(ledger, entries)
    assert verify_ledger(ledger, public).ok
    assert kinds(verify_ledger(ledger, public, head=head)) == {(N_ENTRIES - 1, L.BROKEN_LINK)}


def test_the_cli_reports_a_broken_link_and_exits_1(ledger, keys, tmp_path):
    """Through `semiofed audit verify --head`: the rewritten last entry is named, exit 1."""
    private, public, _ = keys
    head = W.ledger_head(ledger, private, SITE, policy=POLICY)
    entries = L.read_entries(ledger)
    entries[-1] = forge(entries[-1] | {"update_sha256": "e" * 64}, N_ENTRIES - 1, entries[-2]["entry_hash"], private)
    write(ledger, entries)
    (tmp_path / "head.json").write_text(json.dumps(head))
    (tmp_path / "site_key.pub").write_bytes(
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    result = CliRunner().invoke(audit_cmd.app, ["verify", "--ledger", str(ledger), "--site-key", str(tmp_path / "site_key.pub"),
                                                "--head", str(tmp_path / "head.json"), "--format", "json"])
    assert result.exit_code == 1, result.output
    assert [(p["seq"], p["kind"]) for p in json.loads(result.stdout)["problems"]] == [(N_ENTRIES - 1, "broken-link")]


# --- 2. site-mismatch: entries or a head of another site ------------------------------------------------
def test_an_entry_of_another_site_signed_with_the_same_key_is_a_site_mismatch(ledger, keys):
    """A key shared by two sites: site-b's release chained into site-a's ledger, correctly linked and signed."""
    private, public, _ = keys
    entries = L.read_entries(ledger)
    entries.append(forge(fields("run-b", N_ENTRIES + 1, site_id="site-b"), N_ENTRIES, entries[-1]["entry_hash"], private))
    result = verify_ledger(write(ledger, entries), public)
    assert kinds(result) == {(N_ENTRIES, L.SITE_MISMATCH)}, [str(p) for p in result.problems]
    assert "'site-b'" in result.problems[0].detail and result.site_id == SITE


def test_an_entry_of_another_site_under_its_own_key_is_a_site_mismatch_and_a_bad_signature(ledger, keys):
    """site-b's entry, signed by site-b, spliced into site-a's ledger."""
    _, public, foreign = keys
    entries = L.read_entries(ledger)
    entries.append(forge(fields("run-b", N_ENTRIES + 1, site_id="site-b"), N_ENTRIES, entries[-1]["entry_hash"], foreign))
    result = verify_ledger(write(ledger, entries), public)
    assert kinds(result) == {(N_ENTRIES, L.SITE_MISMATCH), (N_ENTRIES, L.BAD_SIGNATURE)}


def test_a_head_of_another_site_is_a_site_mismatch(ledger, keys, tmp_path):
    """A head validly signed with the key, but naming site-b, presented with site-a's ledger."""
    private, public, _ = keys
    other = tmp_path / "site-b.jsonl"
    W.append_entry(other, fields("run-b", 1, site_id="site-b"), private)
    head = W.ledger_head(other, private, "site-b", policy=POLICY)
    assert L.verify_head(head, public)
    result = verify_ledger(ledger, public, head=head)
    assert [p.kind for p in result.problems] == [L.SITE_MISMATCH]
    assert "the head is of site 'site-b'" in result.problems[0].detail


# --- 3. outside-policy on a plain (local-DP) release -----------------------------------------------
@pytest.mark.parametrize("sigma,flagged", [(0.5, True), (0.79, True), (0.8, False)])
def test_a_plain_release_with_less_noise_than_the_policy_minimum_is_outside_policy(tmp_path, keys, sigma, flagged):
    """A site that trained with sigma below its own min_noise_multiplier 0.8, honestly accounted and signed."""
    private, public, _ = keys
    path = tmp_path / "ledger.jsonl"
    W.append_entry(path, fields("run-1", 1, sigma=sigma), private)
    result = verify_ledger(path, public)
    assert kinds(result) == ({(0, L.OUTSIDE_POLICY)} if flagged else set()), [str(p) for p in result.problems]
    if flagged:
        assert f"noise multiplier {sigma:g} is below the policy minimum 0.8" in result.problems[0].detail


@pytest.mark.parametrize("delta,flagged", [(1e-3, True), (2e-5, True), (1e-5, False), (1e-6, False)])
def test_a_plain_release_at_a_delta_above_the_policy_target_is_outside_policy(tmp_path, keys, delta, flagged):
    """A release accounted at a looser delta than the policy's target_delta 1e-5 (its epsilon looks smaller)."""
    private, public, _ = keys
    path = tmp_path / "ledger.jsonl"
    epsilon = release_epsilon(SIGMA, 1.0, 1, delta)
    W.append_entry(path, fields("run-1", 1) | {"delta": delta, "epsilon": epsilon, "epsilon_cumulative": epsilon}, private)
    result = verify_ledger(path, public)
    assert kinds(result) == ({(0, L.OUTSIDE_POLICY)} if flagged else set()), [str(p) for p in result.problems]
    if flagged:
        assert f"delta {delta:g} is above the policy's target_delta 1e-05" in result.problems[0].detail


# --- 4. signature domain separation ------------------------------------------------------------------
def test_an_entry_signature_never_passes_as_a_head_signature(ledger, keys):
    """The entry-context signature over a digest is refused as a head signature, directly and inside a head."""
    private, public, _ = keys
    last = L.read_entries(ledger)[-1]
    assert verify_digest(public, L.ENTRY_CONTEXT, last["entry_hash"], last["signature"])  # control
    assert not verify_digest(public, L.HEAD_CONTEXT, last["entry_hash"], last["signature"])
    head = W.ledger_head(ledger, private, SITE, policy=POLICY)
    forged = head | {"signature": sign_digest(private, L.ENTRY_CONTEXT, head_digest(head))}
    assert not L.verify_head(forged, public)
    result = verify_ledger(ledger, public, head=forged)
    assert [p.kind for p in result.problems] == [L.BAD_SIGNATURE]


def test_a_head_signature_never_passes_as_an_entry_signature(ledger, keys):
    """The head-context signature over an entry's own hash is refused as that entry's signature."""
    private, public, _ = keys
    head = W.ledger_head(ledger, private, SITE, policy=POLICY)
    assert not verify_digest(public, L.ENTRY_CONTEXT, head_digest(head), head["signature"])
    assert verify_digest(public, L.HEAD_CONTEXT, head_digest(head), head["signature"])  # control
    entries = L.read_entries(ledger)
    entries[-1] = entries[-1] | {"signature": sign_digest(private, L.HEAD_CONTEXT, entries[-1]["entry_hash"])}
    result = verify_ledger(write(ledger, entries), public)
    assert kinds(result) == {(N_ENTRIES - 1, L.BAD_SIGNATURE)}, [str(p) for p in result.problems]


# --- 5. the policy may only be tightened -------------------------------------------------------------
BASE = PrivacyPolicy()  # noisy evaluation at sigma 5, at most 2 per run, of at least 2 patients


@pytest.mark.parametrize("field,looser,tighter", [
    ("evaluation_release", "exact", "none"),
    ("evaluation_noise_multiplier", 4.0, 6.0),
    ("max_evaluations_per_run", 3, 1),
    ("min_evaluation_patients", 1, 3),
])
def test_each_evaluation_limit_can_be_tightened_never_loosened(field, looser, tighter):
    """Loosen one evaluation limit of the default policy: refused; tighten it: allowed."""
    assert getattr(BASE, field) not in (looser, tighter)
    assert not BASE.allows_change_to(replace(BASE, **{field: looser}))
    assert BASE.allows_change_to(replace(BASE, **{field: tighter}))


def test_evaluation_release_moves_only_towards_none():
    """exact -> noisy -> none is tightening; each step back is refused."""
    exact, noisy, none = (replace(BASE, evaluation_release=mode) for mode in ("exact", "noisy", "none"))
    assert exact.allows_change_to(noisy) and noisy.allows_change_to(none) and exact.allows_change_to(none)
    assert not none.allows_change_to(noisy) and not noisy.allows_change_to(exact) and not none.allows_change_to(exact)


@pytest.mark.parametrize("field,looser", [("evaluation_release", "exact"), ("evaluation_noise_multiplier", 1.0),
                                          ("max_evaluations_per_run", 10), ("min_evaluation_patients", 1)])
def test_a_site_refuses_to_loosen_its_evaluation_policy_and_keeps_the_old_file(tmp_path, field, looser):
    """`tighten_policy` on a real site directory: a loosening raises and policy.json is left as it was."""
    site = init_site(tmp_path / "site", SITE, BASE)
    before = site.layout.policy_file.read_bytes()
    with pytest.raises(SiteError, match="only be lowered") as refused:
        tighten_policy(site, replace(site.policy, **{field: looser}))
    assert f"{field} " in str(refused.value)  # the refusal names the setting it would loosen
    assert site.layout.policy_file.read_bytes() == before


# --- 6. malformed entries and an under-reported cumulative epsilon ------------------------------------
def test_a_line_that_is_not_json_is_malformed(ledger, keys):
    """Garbage appended after the last entry (with its newline, so not torn)."""
    ledger.write_bytes(ledger.read_bytes() + b"{not json}\n")
    result = verify_ledger(ledger, keys[1])
    assert [(p.line, p.kind) for p in result.problems] == [(N_ENTRIES + 1, L.MALFORMED)]
    assert "not valid JSON" in result.problems[0].detail


def test_a_json_line_that_is_not_an_object_is_malformed(ledger, keys):
    ledger.write_bytes(ledger.read_bytes() + b"[1,2]\n")
    result = verify_ledger(ledger, keys[1])
    assert [(p.line, p.kind) for p in result.problems] == [(N_ENTRIES + 1, L.MALFORMED)]
    assert "not a JSON object" in result.problems[0].detail


@pytest.mark.parametrize("missing", ["update_sha256", "accountant", "prev_hash"])
def test_a_signed_entry_with_a_field_missing_is_malformed(ledger, keys, missing):
    """An entry without one documented field, still hashed and signed by the site key."""
    private, public, _ = keys
    entries = L.read_entries(ledger)
    entry = forge(fields("run-5", N_ENTRIES + 1), N_ENTRIES, entries[-1]["entry_hash"], private)
    del entry[missing]
    entries.append(W.seal(entry, private))
    result = verify_ledger(write(ledger, entries), public)
    assert (N_ENTRIES, L.MALFORMED) in kinds(result), [str(p) for p in result.problems]
    assert f"'{missing}' is missing" in next(p.detail for p in result.problems if p.kind == L.MALFORMED)
    assert not any(p.kind in (L.TAMPERED, L.BAD_SIGNATURE) for p in result.problems)


def test_a_signed_entry_with_an_unknown_field_is_malformed(ledger, keys):
    """An extra field a reader might trust (here a claimed lower epsilon), hashed and signed by the site key."""
    private, public, _ = keys
    entries = L.read_entries(ledger)
    body = fields("run-5", N_ENTRIES + 1) | {"epsilon_adjusted": 0.01}
    entries.append(forge(body, N_ENTRIES, entries[-1]["entry_hash"], private))
    result = verify_ledger(write(ledger, entries), public)
    assert kinds(result) == {(N_ENTRIES, L.MALFORMED)}, [str(p) for p in result.problems]
    assert "unknown fields ['epsilon_adjusted']" in result.problems[0].detail


def test_an_under_reported_cumulative_epsilon_is_named(ledger, keys):
    """The release's own epsilon is right, but the cumulative one forgets every earlier release."""
    private, public, _ = keys
    alone = release_epsilon(SIGMA, 1.0, 1, DELTA)
    W.append_entry(ledger, fields("run-5", N_ENTRIES + 1) | {"epsilon_cumulative": alone}, private)
    result = verify_ledger(ledger, public)
    assert kinds(result) == {(N_ENTRIES, L.EPSILON_UNDER_REPORTED)}, [str(p) for p in result.problems]
    assert result.problems[0].detail.startswith("epsilon_cumulative ")
    assert result.entries[N_ENTRIES].epsilon_cumulative_recomputed == pytest.approx(epsilon_after(N_ENTRIES + 1))


def test_a_cumulative_epsilon_just_inside_the_tolerance_is_not_flagged(ledger, keys):
    """Control for the above: 0.5% below the recomputation is within the documented 1%, 2% below is not."""
    private, public, _ = keys
    honest = epsilon_after(N_ENTRIES + 1)
    W.append_entry(ledger, fields("run-5", N_ENTRIES + 1) | {"epsilon_cumulative": honest * 0.995}, private)
    assert verify_ledger(ledger, public).ok
    W.append_entry(ledger, fields("run-6", N_ENTRIES + 2) | {"epsilon_cumulative": epsilon_after(N_ENTRIES + 2) * 0.98},
                   private)
    assert kinds(verify_ledger(ledger, public)) == {(N_ENTRIES + 1, L.EPSILON_UNDER_REPORTED)}
