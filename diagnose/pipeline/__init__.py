"""The run pipeline: config (defaults < TOML < flags), run directory, per-question estimate, tables, report."""

from .config import RunConfig
from .runner import Runner, run

__all__ = ["RunConfig", "Runner", "run"]
