"""Shared fixtures. Real data comes from ``../shared/data`` (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("CMROPS_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The 159-photo COCO sample. Skips when absent, but FAILS when the environment says it
    must be there (``CMROPS_REQUIRE_SHARED_DATA=1``, set by ``.ci/run``)."""
    root = shared_data_dir() / "coco_mini"
    if not (root / "pairs.jsonl").is_file():
        msg = f"COCO sample not found at {root} (set CMROPS_SHARED_DATA to the shared/data folder)"
        if os.environ.get("CMROPS_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root
