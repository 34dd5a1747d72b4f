"""A hospital site's directory: its layout, identity and keys."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from semiofed.common.errors import SiteError
from semiofed.common.files import make_private_dir, write_bytes_atomic, write_json_atomic
from semiofed.common.privacy.budgeted_run import SitePrivacy
from semiofed.common.privacy.policy import PrivacyPolicy, load_policy, save_policy

SITE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class SiteLayout:
    """Where everything of one site lives, under its site directory."""

    root: Path

    @property
    def site_file(self) -> Path:
        return self.root / "site.json"

    @property
    def policy_file(self) -> Path:
        return self.root / "policy.json"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def private_key(self) -> Path:
        """ECDSA P-384 private key (PEM, PKCS8): signs the ledger, authenticates the SuperNode."""
        return self.keys_dir / "site_key.pem"

    @property
    def public_key(self) -> Path:
        """The site's public key in OpenSSH format, given to the coordinator and auditor."""
        return self.keys_dir / "site_key.pub"

    @property
    def pseudonym_key(self) -> Path:
        """The secret for keyed-HMAC pseudonyms; never leaves the site."""
        return self.keys_dir / "pseudonym.key"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def records_dir(self) -> Path:
        return self.store / "records"

    @property
    def failed_dir(self) -> Path:
        return self.store / "failed"

    @property
    def linkage_file(self) -> Path:
        """Original ids to pseudonyms; kept apart so the site can delete it."""
        return self.root / "linkage.csv"

    @property
    def ledger_file(self) -> Path:
        """The privacy ledger, JSON Lines, one entry a line."""
        return self.root / "ledger.jsonl"

    @property
    def privacy_dir(self) -> Path:
        """Persisted accountant state."""
        return self.root / "privacy"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"


@dataclass(frozen=True)
class Site:
    """An initialised site: id, layout and policy."""

    site_id: str
    layout: SiteLayout
    policy: PrivacyPolicy
    # a store of public, consented seizure videos (`site init --public-reference`), not a hospital's patients: a model
    # trained on it without DP may leave it (`coordinator public-model`)
    public_reference: bool = False

    @property
    def privacy(self) -> SitePrivacy:
        """The site's privacy state (policy, accountant, ledger, signing key) for budgeted DP runs."""
        return SitePrivacy(site_id=self.site_id, policy=self.policy, privacy_dir=self.layout.privacy_dir,
                           ledger_file=self.layout.ledger_file, private_key=self.layout.private_key)

    def pseudonym_secret(self) -> bytes:
        """The site's HMAC secret."""
        return bytes.fromhex(self.layout.pseudonym_key.read_text(encoding="ascii").strip())


def init_site(root: Path, site_id: str, policy: PrivacyPolicy | None = None, *, public_reference: bool = False) -> Site:
    """Create a site directory: signing key pair, pseudonym secret, policy, empty store and ledger (marked as a public
    reference store when `public_reference`).

    Refuses to overwrite an existing site (its keys and secret cannot be recreated).
    """
    if not SITE_ID_RE.match(site_id):
        raise SiteError(f"site id '{site_id}' is not allowed", "use 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    layout = SiteLayout(Path(root))
    if layout.site_file.exists():
        raise SiteError(f"{layout.root} is already an initialised site", "use another --site-dir, or keep this one")
    make_private_dir(layout.root)
    make_private_dir(layout.keys_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    write_bytes_atomic(
        layout.private_key,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_bytes_atomic(
        layout.public_key,
        # the comment names the site, so the coordinator enrolls it under its own id
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + f" {site_id}\n".encode("ascii"),
        mode=0o644,
    )
    write_bytes_atomic(layout.pseudonym_key, (secrets.token_hex(32) + "\n").encode("ascii"))
    policy = policy or PrivacyPolicy()
    save_policy(layout.policy_file, policy)
    make_private_dir(layout.records_dir)
    make_private_dir(layout.failed_dir)
    make_private_dir(layout.privacy_dir)
    if not layout.ledger_file.exists():
        write_bytes_atomic(layout.ledger_file, b"")
    # site.json last: its presence marks a complete site.
    write_json_atomic(layout.site_file, {"site_id": site_id, "layout_version": 1}
                      | ({"public_reference": True} if public_reference else {}))
    return open_site(root)


def open_site(root: Path) -> Site:
    """Open an initialised site directory, or say how to create one."""
    layout = SiteLayout(Path(root))
    if not layout.site_file.is_file():
        raise SiteError(f"{layout.root} is not a semiofed site directory", f"run `semiofed site init --site-dir {layout.root} --site-id NAME`")
    try:
        info = json.loads(layout.site_file.read_text(encoding="utf-8"))
        site_id, public_reference = info["site_id"], info.get("public_reference") is True
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise SiteError(f"{layout.site_file} is unreadable ({exc})", "restore the site directory from backup") from exc
    for needed in (layout.private_key, layout.pseudonym_key):
        if not needed.is_file():
            raise SiteError(f"site file {needed} is missing", "restore the site directory from backup")
    for path in (layout.private_key, layout.pseudonym_key):
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    return Site(site_id=site_id, layout=layout, policy=load_policy(layout.policy_file), public_reference=public_reference)


def tighten_policy(site: Site, new: PrivacyPolicy) -> Site:
    """Replace the site's policy with one that spends no more privacy; refuse anything looser."""
    loosened = site.policy.loosened_by(new)
    if loosened:
        raise SiteError(
            f"the new policy would allow more privacy spending than the current one: {'; '.join(loosened)}",
            "a site's budget can only be lowered: keep max_epsilon, delta and the evaluations allowed at most, the noise "
            "and the minimum patients per fold at least, and the evaluation release no looser than now",
        )
    save_policy(site.layout.policy_file, new)
    return open_site(site.layout.root)
