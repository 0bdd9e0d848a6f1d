"""Distillation objectives: name -> update direction d = -dL/dz over the student's logits.

    >>> from diagnose import objectives
    >>> objectives.available()            # every registered name
    >>> obj = objectives.get("jsd", beta=0.5)   # or objectives.parse("jsd:beta=0.5")
    >>> d = obj.direction(student_logits, teacher_logits, tokens)   # float32 [N, V]

Add your own with `@objectives.register("name", param=default)` on an `Objective` subclass.
"""

from . import divergences, sampled, topk  # noqa: F401  (registers the built-ins)
from .base import NEEDS_LOGITS, NEEDS_NONE, NEEDS_TOKEN, NEEDS_TOPK, Objective, log_probs
from .registry import available, defaults, get, parse, register

__all__ = [
    "Objective",
    "available",
    "defaults",
    "get",
    "parse",
    "register",
    "log_probs",
    "NEEDS_LOGITS",
    "NEEDS_TOPK",
    "NEEDS_TOKEN",
    "NEEDS_NONE",
]
