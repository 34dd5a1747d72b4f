"""The installed semiofed version (sites refuse an app built for another one)."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version


@lru_cache(maxsize=1)
def semiofed_version() -> str:
    """The version of the installed semiofed distribution."""
    try:
        return version("semiofed")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
