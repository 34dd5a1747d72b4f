"""Site init/info: keys, secret and policy, owner-only files, clear errors."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from semiofed.client.deid.pseudonym import patient_pseudonym, record_id
from semiofed.client.site import init_site, open_site
from semiofed.common.errors import SiteError
from semiofed.common.privacy.policy import PrivacyPolicy, load_policy

CLI = [sys.executable, "-m", "semiofed.cli"]


def test_init_creates_keys_secret_policy(tmp_path: Path) -> None:
    site = init_site(tmp_path / "site", "hospital-a", PrivacyPolicy(max_epsilon=3.0, target_delta=1e-6))
    layout = site.layout
    key = serialization.load_pem_private_key(layout.private_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    public = serialization.load_ssh_public_key(layout.public_key.read_bytes())
    assert public.public_numbers() == key.public_key().public_numbers()
    assert len(site.pseudonym_secret()) == 32
    assert load_policy(layout.policy_file) == PrivacyPolicy(max_epsilon=3.0, target_delta=1e-6)
    for private in (layout.private_key, layout.pseudonym_key, layout.policy_file, layout.root, layout.keys_dir):
        assert stat.S_IMODE(private.stat().st_mode) & 0o077 == 0, private
    assert layout.ledger_file.read_text() == ""


def test_init_refuses_to_overwrite_and_bad_ids(tmp_path: Path) -> None:
    init_site(tmp_path / "s", "a")
    with pytest.raises(SiteError, match="already an initialised site"):
        init_site(tmp_path / "s", "a")
    with pytest.raises(SiteError, match="site id"):
        init_site(tmp_path / "t", "../evil")
    with pytest.raises(SiteError, match="not a semiofed site"):
        open_site(tmp_path / "nowhere")


def test_policy_validation(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="max_epsilon"):
        PrivacyPolicy(max_epsilon=-1)
    with pytest.raises(SiteError, match="target_delta"):
        PrivacyPolicy(target_delta=2.0)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"max_epsilon": 1.0, "epsilon_per_round": 9}))
    with pytest.raises(SiteError, match="unknown fields"):
        load_policy(path)
    assert PrivacyPolicy(max_epsilon=8).allows_change_to(PrivacyPolicy(max_epsilon=4))
    assert not PrivacyPolicy(max_epsilon=4).allows_change_to(PrivacyPolicy(max_epsilon=8))


def test_pseudonyms_are_keyed_and_stable() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert record_id(a, "P1", "S1") == record_id(a, "P1", "S1")
    assert record_id(a, "P1", "S1") != record_id(b, "P1", "S1")
    assert record_id(a, "P1", "S1") != record_id(a, "P1", "S2")
    # the separator keeps ("P1", "1S") and ("P11", "S") apart
    assert record_id(a, "P1", "1S") != record_id(a, "P11", "S")
    assert patient_pseudonym(a, "P1").startswith("p-") and len(patient_pseudonym(a, "P1")) == 18


def test_cli_init_and_info_json(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    done = subprocess.run([*CLI, "site", "init", "--site-dir", str(site_dir), "--site-id", "hosp-b",
                           "--max-epsilon", "4", "--delta", "1e-6"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = json.loads(subprocess.run([*CLI, "site", "info", "--site-dir", str(site_dir), "--format", "json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["site_id"] == "hosp-b"
    for key in ("public_key", "store", "policy", "ledger"):
        assert Path(info[key]).exists(), key
    assert info["privacy_policy"]["max_epsilon"] == 4.0
    again = subprocess.run([*CLI, "site", "init", "--site-dir", str(site_dir), "--site-id", "hosp-b"],
                           capture_output=True, text=True)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already an initialised site" in again.stderr
    assert "Traceback" not in again.stderr


def test_budget_can_only_be_lowered(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    init_site(site_dir, "tight", PrivacyPolicy(max_epsilon=8.0))
    lower = subprocess.run([*CLI, "site", "policy", "--site-dir", str(site_dir), "--max-epsilon", "3", "--format", "json"],
                           capture_output=True, text=True)
    assert lower.returncode == 0, lower.stderr
    assert json.loads(lower.stdout)["max_epsilon"] == 3.0
    for flag, value in (("--max-epsilon", "5"), ("--delta", "1e-3"), ("--min-noise-multiplier", "0.1")):
        raised = subprocess.run([*CLI, "site", "policy", "--site-dir", str(site_dir), flag, value],
                                capture_output=True, text=True)
        assert raised.returncode == 1 and "can only be lowered" in raised.stderr, flag
    assert open_site(site_dir).policy.max_epsilon == 3.0
