"""The auditor's code (common/audit/) imports neither torch nor opacus, also while it verifies a real ledger."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from semiofed.client.site import init_site
from semiofed.common.privacy.accountant import _epsilon_of
from semiofed.common.privacy.budgeted_run import record_release
from semiofed.common.privacy.keys import load_site_private_key
from semiofed.common.privacy.ledger import KIND_FEDERATED
from semiofed.common.privacy.ledger_writer import ledger_head
from semiofed.common.privacy.policy import PrivacyPolicy

SIGMA, Q, STEPS, ROUNDS = 1.2, 0.1, 10, 3
FORBIDDEN = ("torch", "opacus")

# Run in a fresh interpreter: the test process itself has torch and opacus loaded (the site side wrote the ledger).
AUDITOR = textwrap.dedent("""
    import json, sys
    forbidden = {forbidden!r}
    loaded = lambda: sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
    import semiofed.common.audit.verify, semiofed.common.audit.pld, semiofed.common.audit.report
    after_import = loaded()
    from pathlib import Path
    from semiofed.common.audit.report import SiteLedger, audit_site, build_report
    from semiofed.common.audit.verify import verify_ledger
    from semiofed.common.privacy.keys import load_public_key
    site = SiteLedger("hospital-a", Path({ledger!r}), Path({key!r}))
    honest = verify_ledger(site.ledger, load_public_key(site.public_key), head=json.loads({head!r}))
    tampered = audit_site(SiteLedger("tampered", Path({tampered!r}), site.public_key))
    page = build_report([(site, honest), (SiteLedger("tampered", Path({tampered!r}), site.public_key), tampered)])
    print(json.dumps({{"after_import": after_import, "after_verify": loaded(), "ok": honest.ok,
                       "entries": len(honest.entries),
                       "recomputed": [e.epsilon_cumulative_recomputed for e in honest.entries],
                       "tampered": [p.kind for p in tampered.problems], "report_svgs": page.count("<svg")}}))
""")


def test_audit_verifies_a_real_ledger_without_torch_or_opacus(tmp_path: Path) -> None:
    site = init_site(tmp_path / "hospital-a", "hospital-a", PrivacyPolicy(max_epsilon=8.0))
    for r in range(1, ROUNDS + 1):  # as the client records a federated round's release
        record_release(site.privacy, kind=KIND_FEDERATED, run_id="fed-1", round=r, update_sha256=f"{r:064x}",
                       noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS, clipping_norm=1.0,
                       epsilon_cumulative=_epsilon_of([(SIGMA, Q, STEPS * r)], site.policy.target_delta))
    head = ledger_head(site.layout.ledger_file, load_site_private_key(site.layout.private_key), site.site_id)
    tampered = tmp_path / "tampered.jsonl"
    lines = site.layout.ledger_file.read_bytes().splitlines(keepends=True)
    tampered.write_bytes(b"".join([lines[0].replace(b'"round":1', b'"round":7'), *lines[1:]]))

    code = AUDITOR.format(forbidden=FORBIDDEN, ledger=str(site.layout.ledger_file), key=str(site.layout.public_key),
                          head=json.dumps(head), tampered=str(tampered))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["after_import"] == [], f"importing common/audit loads {result['after_import']}"
    assert result["after_verify"] == [], f"verifying a ledger loads {result['after_verify']}"
    assert result["ok"] is True and result["entries"] == ROUNDS
    # the PLD recomputation really ran: epsilon grows round after round and stays close to the site's PRV figure
    expected = [_epsilon_of([(SIGMA, Q, STEPS * r)], site.policy.target_delta) for r in range(1, ROUNDS + 1)]
    assert all(abs(a - b) <= 0.05 * b for a, b in zip(result["recomputed"], expected)), (result["recomputed"], expected)
    assert result["tampered"] == ["tampered"] and result["report_svgs"] == 2
