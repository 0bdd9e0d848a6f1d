"""Engines: one protocol (base.Engine), several back ends, chosen by name from a registry.

Back ends are imported lazily, so `vllm` is only needed when the vllm engine is asked for.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Continuation, Engine, Sample, SamplingParams, Scores, check_protocol, precision, render_prompt

_ENGINES = Registry("engine")
_ENGINES.add("hf", "diagnose.engines.hf:HFEngine")
_ENGINES.add("vllm", "diagnose.engines.vllm:VLLMEngine")
_ENGINES.add("exact", "diagnose.engines.exact:ExactEngine")


def register(name: str, target) -> None:
    """Register an engine class by import path, `package.module:ClassName` (imported on first use), or the
    class itself; registering a name again replaces it."""
    _ENGINES.add(name, target, replace=True)


def available() -> list[str]:
    return _ENGINES.available()


def check(name: str) -> None:
    """Refuse an unregistered engine name (one line listing the registered ones) without importing any."""
    if name not in _ENGINES:
        raise _ENGINES.unknown(name)


def engine_class(name: str):
    """The class of engine `name` (its module imported now); unknown names raise a DiagnoseError listing
    the registered ones."""
    return _ENGINES.get(name)


def load(name: str, model: str, **kwargs) -> Engine:
    """Build engine `name` for `model` (a Hugging Face id, a local path, or `embedded`); one that lacks a
    protocol attribute is refused with one line."""
    engine = engine_class(name)(model, **kwargs)
    check_protocol(engine, name)
    return engine


__all__ = [
    "Continuation",
    "Engine",
    "Sample",
    "SamplingParams",
    "Scores",
    "render_prompt",
    "precision",
    "register",
    "available",
    "check",
    "engine_class",
    "load",
]
