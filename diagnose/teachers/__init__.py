"""Teachers: configurations (model x context), context builders, scoring, tokenizer compatibility, and the
estimator's TeacherFns (at_nodes.py: every teacher the estimator calls is made there)."""

from .at_nodes import TeacherAtNodes, engine_teacher
from .compat import check_compatible, tokenizer_differences
from .contexts import CONTEXTS, ContextInputs, available, build_messages, parse_context, register_context
from .scoring import TeacherScores, densify, payload_for, score_rollouts
from .spec import TeacherConfig, parse_teacher

__all__ = [
    "CONTEXTS",
    "ContextInputs",
    "TeacherAtNodes",
    "TeacherConfig",
    "TeacherScores",
    "available",
    "build_messages",
    "check_compatible",
    "densify",
    "engine_teacher",
    "parse_context",
    "parse_teacher",
    "payload_for",
    "register_context",
    "score_rollouts",
    "tokenizer_differences",
]
