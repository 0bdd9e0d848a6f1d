"""Engines: one protocol (base.Engine), several back ends, chosen by name from a registry."""

from .base import Continuation, Engine, Sample, SamplingParams, Scores, render_prompt

__all__ = ["Continuation", "Engine", "Sample", "SamplingParams", "Scores", "render_prompt"]
