"""Data flows one way: the coordinator's aggregation code imports nothing from the hospital side."""

from __future__ import annotations

import subprocess
import sys


def test_serverapp_and_strategy_import_nothing_from_client():
    code = ("import sys; import semiofed.server.federation.server_app, semiofed.server.federation.strategy; "
            "print(sorted(m for m in sys.modules if m.startswith('semiofed.client')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
