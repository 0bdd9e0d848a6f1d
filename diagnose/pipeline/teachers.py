"""Teachers inside a run: load each configured teacher's engine once (teachers/at_nodes.py turns a loaded teacher
into the estimator's TeacherFn)."""

from __future__ import annotations

from typing import Sequence

from .. import engines
from ..teachers import TeacherConfig, check_compatible


def teacher_dtype(student_engine, dtype: str = "auto") -> str:
    """The precision external teachers load in: `auto` is the student's (a teacher in a coarser precision than
    the student differs from it by rounding alone; estimate/signal.py sizes that), else as given."""
    if dtype != "auto":
        return dtype
    return engines.precision(student_engine)


def load_teacher_engines(
    configs: Sequence[TeacherConfig], student_engine, engine_name: str, dtype: str = "auto", served=None
) -> dict[str, object]:
    """model -> engine; `self` is the student's engine. External teachers load in `teacher_dtype(...)` (the
    student's precision by default) and must share the student's tokenizer (checked before any work).
    `served`: model -> an engine already running elsewhere (a teacher server), used instead of loading."""
    out: dict[str, object] = {"self": student_engine}
    for cfg in configs:
        if cfg.is_self or cfg.model in out:
            continue
        if served is not None and cfg.model in served:
            teacher = served[cfg.model]
        else:
            teacher = engines.load(engine_name, cfg.model, dtype=teacher_dtype(student_engine, dtype))
        check_compatible(
            student_engine.tokenizer, teacher.tokenizer, cfg.model, student_engine.vocab_size, teacher.vocab_size
        )
        out[cfg.model] = teacher
    return out
