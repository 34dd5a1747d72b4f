"""Shared fixtures: the real model files and the real videos from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMIOFED_SHARED", REPO_ROOT.parent / "shared"))


def _required_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.fail(f"{what} not found at {path}: set SEMIOFED_SHARED or place shared/ beside the checkout")
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The verified model directory ($SEMIOFED_MODEL_DIR, else ../shared/models); exported for subprocesses."""
    path = Path(os.environ.get("SEMIOFED_MODEL_DIR") or SHARED / "models")
    os.environ["SEMIOFED_MODEL_DIR"] = str(path)
    return _required_dir(path, "model directory")


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    """The real public clips of people in ../shared/videos."""
    return _required_dir(Path(os.environ.get("SEMIOFED_TEST_VIDEOS") or SHARED / "videos"), "test videos")


@pytest.fixture()
def ledger(honest: bytes, tmp_path: Path) -> Path:
    """A fresh copy of the test module's `honest` ledger (its bytes), for one test to attack."""
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(honest)
    return path
