"""The settings of `diagnose validate`: defaults < TOML file < flags, validated when built, saved beside the
run's tables so a killed validation resumes only with the same settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DiagnoseError

REFERENCES = ("ideal", "grpo", "control")
# Keys that change no number: left out of the identity a resumed validation must match.
NON_IDENTITY = {"progress", "restart"}


@dataclass
class ValidateConfig:
    """How each arm trains and how pass@1 is measured (the student, task, temperature, length limit, teachers
    and estimate budget come from the run being validated)."""

    steps: int = 6  # optimizer steps per arm and seed
    lr: float = 3e-5  # AdamW learning rate (calibrated on the embedded student: 1e-4 collapsed it)
    batch: int = 8  # training questions per step
    rollouts: int = 0  # rollouts per training question (the GRPO group); 0 = the run's `rollouts`
    eval_questions: int = 64  # held-out questions for pass@1 (disjoint from the training questions)
    eval_samples: int = 4  # samples per held-out question
    seeds: int = 2  # training seeds per arm (seed i trains on its own question order and rollouts)
    train_layers: int = 2  # the last N decoder blocks (and the final norm) train; 0 = every parameter
    max_grad_norm: float = 1.0
    micro_batch: int = 8  # rollouts per forward/backward pass (memory; changes no number beyond rounding)
    configs: list[str] = field(default_factory=list)  # teacher|objective labels of the run to train; [] = all
    references: list[str] = field(default_factory=lambda: list(REFERENCES))
    metric: str = "cos_full"  # the run's alignment column the gains are correlated with
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0  # offsets the training seeds and draws the held-out questions
    progress: bool = True
    restart: bool = False  # discard an earlier validation of this run instead of resuming it

    @classmethod
    def from_sources(cls, toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
        from ..pipeline.config import build_config

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
