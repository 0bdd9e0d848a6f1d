"""The settings of `diagnose validate`: defaults < TOML file < flags, validated when built, saved beside the
run's tables so a killed validation resumes only with the same settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import DiagnoseError
from ..pipeline.config import build_config, setting

REFERENCES = ("ideal", "grpo", "control")
# Keys that change no number: left out of the identity a resumed validation must match.
NON_IDENTITY = {"progress", "restart"}


@dataclass
class ValidateConfig:
    """How each arm trains and how pass@1 is measured (the student, task, temperature, length limit, teachers
    and estimate budget come from the run being validated)."""

    steps: int = setting(6, "Optimizer steps per arm and seed.")
    # calibrated on the embedded student: 1e-4 collapsed it
    lr: float = setting(3e-5, "AdamW learning rate.")
    batch: int = setting(8, "Training questions per step.")
    rollouts: int = setting(
        0, "On-policy rollouts per training question, GRPO's group (default 0: the run's --rollouts)."
    )
    eval_questions: int = setting(64, "Held-out questions for pass@1, disjoint from the training questions.")
    eval_samples: int = setting(4, "Samples per held-out question.")
    seeds: int = setting(2, "Training seeds per arm (seed i trains on its own question order and rollouts).")
    train_layers: int = setting(
        2, "Train the last N decoder blocks and the final norm (default 2); 0 trains every parameter."
    )
    max_grad_norm: float = setting(1.0, "Gradient-norm clip of every optimizer step.")
    micro_batch: int = setting(
        8, "Rollouts per forward/backward pass (memory; changes no number beyond rounding)."
    )
    configs: list[str] = setting(
        [], "Configuration of the run to train, as teacher|objective (repeatable; default: all of them).", flag="arm"
    )
    references: list[str] = setting(
        list(REFERENCES), "Reference arm (repeatable): ideal, grpo, control (default: all three).", flag="reference"
    )
    metric: str = setting("cos_full", "The run's alignment to correlate with: cos_full or cos_support.")
    n_boot: int = setting(1000, "Bootstrap replicates of the intervals (pass@1, gains, the rank correlation).")
    level: float = setting(0.95, "Confidence level of the intervals.")
    seed: int = setting(0, "Seed of the held-out questions and of the training seeds.")
    progress: bool = setting(True, "Progress bars (the CLI's --quiet turns them off).", cli=False)
    restart: bool = setting(
        False, "Discard an earlier validation of RUN_DIR instead of resuming it.", cli=False
    )

    @classmethod
    def from_sources(cls, toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
        return build_config(cls, toml_path, overrides, "validate")

    def __post_init__(self):
        self.configs = [str(c) for c in (self.configs or [])]
        self.references = [str(r) for r in (self.references or [])]

    def validate(self) -> None:
        """Cheap checks that need no model."""
        from ..tables import METRICS

        for name in ("steps", "batch", "eval_questions", "eval_samples", "seeds", "micro_batch", "n_boot"):
            if int(getattr(self, name)) < 1:
                raise DiagnoseError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("rollouts", "train_layers"):
            if int(getattr(self, name)) < 0:
                raise DiagnoseError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.rollouts == 1 and "grpo" in self.references:
            raise DiagnoseError("--rollouts 1 leaves GRPO no group to baseline against; use >= 2")
        if not self.lr > 0:
            raise DiagnoseError(f"--lr must be > 0, got {self.lr}")
        if not self.max_grad_norm > 0:
            raise DiagnoseError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        if not 0 < self.level < 1:
            raise DiagnoseError(f"--level must lie in (0, 1), got {self.level}")
        bad = [r for r in self.references if r not in REFERENCES]
        if bad:
            raise DiagnoseError(f"unknown reference arm {bad[0]!r}; choose from {', '.join(REFERENCES)}")
        if self.metric not in METRICS:
            raise DiagnoseError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in NON_IDENTITY}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
