"""Shared fixtures: the real evaluation data, the prepared embedded model (SmolLM2-135M-Instruct) and engines
on it, each built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning: on a small shared machine spinning torch threads slow every
# model-running test several-fold. Set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    """Local path of the embedded checkpoint (converted once by `diagnose models prepare`; quick when done)."""
    from diagnose import models

    models.prepare(log=lambda msg: None)
    return models.resolve_model(models.EMBEDDED)


@pytest.fixture(scope="session")
def hf_engine(embedded_model_path):
    """The transformers engine on the embedded model, float32 on the CPU."""
    from diagnose.engines.hf import HFEngine

    return HFEngine(embedded_model_path, dtype="float32", device="cpu", batch_size=32)


@pytest.fixture(scope="session")
def vllm_engine(embedded_model_path):
    """The vLLM engine on the embedded model (float32, so it can be compared tightly with hf); skipped
    where vLLM is not installed."""
    pytest.importorskip("vllm")
    from diagnose.engines.vllm import VLLMEngine

    engine = VLLMEngine(embedded_model_path, dtype="float32", seed=0, max_model_len=2048,
                        kv_cache_memory_bytes=1 << 30)
    yield engine
    engine.close()
