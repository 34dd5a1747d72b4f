"""The site's side of the privacy ledger: one signed entry for every DP release, local run or federated round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semiofed.client.site import Site
from semiofed.common.privacy.keys import load_site_private_key
from semiofed.common.privacy.ledger import KIND_LOCAL, append_entry, check_appendable, release_fields
from semiofed.common.privacy.accountant import _epsilon_of


def check_ledger_appendable(site: Site) -> None:
    """Raise LedgerError now, before any training, if the site's ledger could not take the next entry."""
    check_appendable(site.layout.ledger_file, load_site_private_key(site.layout.private_key).public_key())


def record_release(
    site: Site,
    *,
    kind: str,
    run_id: str,
    round: int,
    update_sha256: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    clipping_norm: float,
    epsilon_cumulative: float,
) -> dict[str, Any]:
    """Append the entry of one DP release; its own epsilon is computed here with the site's accountant (Opacus PRV)."""
    delta = site.policy.target_delta
    fields = release_fields(
        site_id=site.site_id, run_id=run_id, round=round, kind=kind, update_sha256=update_sha256,
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, clipping_norm=clipping_norm,
        epsilon=_epsilon_of([(noise_multiplier, sample_rate, steps)], delta), epsilon_cumulative=epsilon_cumulative,
        policy=site.policy,
    )
    return append_entry(site.layout.ledger_file, fields, load_site_private_key(site.layout.private_key))


def record_local_run(site: Site, checkpoint: Path, *, noise_multiplier: float, sample_rate: float, steps: int,
                     clipping_norm: float, epsilon_cumulative: float) -> dict[str, Any]:
    """Record a finished local DP run: the release is the checkpoint's weights (their sha256 from model.json)."""
    from semiofed.common.learning.checkpoint import META_FILE

    meta = json.loads((Path(checkpoint) / META_FILE).read_text(encoding="utf-8"))
    return record_release(site, kind=KIND_LOCAL, run_id=Path(checkpoint).name, round=0,
                          update_sha256=meta["weights_sha256"], noise_multiplier=noise_multiplier,
                          sample_rate=sample_rate, steps=steps, clipping_norm=clipping_norm,
                          epsilon_cumulative=epsilon_cumulative)
