"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real evaluation data (GSM8K test, MATH-500): $DIAGNOSE_SHARED_DATA, else `shared/data` beside the
    repository root (CI puts a copy of shared/ there). Tests using it skip when it is absent."""
    env = os.environ.get("DIAGNOSE_SHARED_DATA")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data"]
    for folder in candidates:
        if (folder / "gsm8k" / "test.jsonl").is_file() and (folder / "math500" / "test.jsonl").is_file():
            return folder
    pytest.skip(f"real evaluation data not found (looked in {', '.join(map(str, candidates))})")
