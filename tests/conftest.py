"""Shared fixtures: the prepared embedded model (SmolLM2-135M-Instruct) and engines on it, built once per
session."""

from __future__ import annotations

import os

import pytest

# Idle OpenMP threads sleep instead of spinning: on a small shared machine spinning torch threads slow
# every model-running test several-fold. Set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    """Local path of the embedded checkpoint (converted once by `diagnose models prepare`)."""
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
