"""Teachers: configurations (model x context), context builders, scoring, tokenizer compatibility."""

from .compat import check_compatible, tokenizer_differences
from .contexts import CONTEXTS, ContextInputs, available, build_messages, parse_context, register_context
from .scoring import TeacherScores, densify, payload_for, score_rollouts
from .spec import TeacherConfig, parse_teacher

__all__ = [
    "CONTEXTS",
    "ContextInputs",
    "TeacherConfig",
    "TeacherScores",
    "available",
    "build_messages",
    "check_compatible",
    "densify",
    "parse_context",
    "parse_teacher",
    "payload_for",
    "register_context",
    "score_rollouts",
    "tokenizer_differences",
]
