"""`diagnose validate`: check the diagnosis against what training does.

For a finished run, each configuration (teacher x objective) trains the student for a few on-policy steps
from the same starting weights, beside three reference arms (the estimated ideal direction, GRPO on the task
reward, and a teacher with shuffled vocabulary); the change in held-out pass@1 is then correlated with the
configuration's alignment. Flow: config.py (settings) -> arms.py (each arm's direction d per token) ->
policy.py (the trainable student) -> runner.py (train, evaluate, write tables) -> stats.py (estimands,
paired bootstrap intervals, rank correlation).
"""

from .arms import Arm
from .config import REFERENCES, ValidateConfig
from .runner import Validation, ValidationResult, validate
from .stats import ESTIMANDS

__all__ = ["Arm", "ESTIMANDS", "REFERENCES", "ValidateConfig", "Validation", "ValidationResult", "validate"]
