"""Engines: one protocol (base.Engine), several back ends, chosen by name from a registry.

Back ends are imported lazily, so `vllm` is only needed when the vllm engine is asked for.
"""

from __future__ import annotations

import importlib

from ..errors import DiagnoseError
from .base import Continuation, Engine, Sample, SamplingParams, Scores, render_prompt

_ENGINES: dict[str, str] = {
    "hf": "diagnose.engines.hf:HFEngine",
    "vllm": "diagnose.engines.vllm:VLLMEngine",
    "exact": "diagnose.engines.exact:ExactEngine",
}


def register(name: str, target: str) -> None:
    """Register an engine class by import path, `package.module:ClassName`."""
    _ENGINES[name] = target


def available() -> list[str]:
    return sorted(_ENGINES)


def engine_class(name: str):
    if name not in _ENGINES:
        raise DiagnoseError(f"unknown engine {name!r}; available: {', '.join(available())}")
    module, _, cls = _ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load(name: str, model: str, **kwargs) -> Engine:
    """Build engine `name` for `model` (a Hugging Face id, a local path, or `embedded`)."""
    return engine_class(name)(model, **kwargs)


__all__ = [
    "Continuation",
    "Engine",
    "Sample",
    "SamplingParams",
    "Scores",
    "render_prompt",
    "register",
    "available",
    "engine_class",
    "load",
]
