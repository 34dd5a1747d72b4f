"""Test helper: the files and directories of a site that others on the machine could read."""

from __future__ import annotations

import stat
from pathlib import Path


def readable_by_others(site_root: Path, public: tuple[Path, ...] = ()) -> list[str]:
    """Every path under the site (and the site itself) with any group or other permission bit, except `public`."""
    exempt = {p.resolve() for p in public}
    paths = [site_root, *site_root.rglob("*")]
    return [f"{p.relative_to(site_root.parent)} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in paths
            if p.resolve() not in exempt and stat.S_IMODE(p.stat().st_mode) & 0o077]
