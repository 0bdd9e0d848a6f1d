"""Teachers inside a run: load each configured teacher once, and adapt it to the estimator's TeacherFn,
which asks for the teacher's logits at a batch of nodes (on the student's own prefixes)."""

from __future__ import annotations

from typing import Sequence

import torch

from .. import engines
from ..errors import DiagnoseError
from ..estimate.signal import roundoff
from ..tasks import Question as TaskQuestion
from ..teachers import ContextInputs, TeacherConfig, build_messages, check_compatible, parse_context, score_rollouts


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


def context_inputs(q: TaskQuestion, rollouts, scored_index: int, summary: str | None) -> ContextInputs:
    """What the context may show for one rollout; contrastive examples never include the scored rollout."""
    others = [r for i, r in enumerate(rollouts) if i != scored_index]
    right = q.meta.get("correct_solution") or next((r.text for r in others if r.correct), None) or q.solution
    wrong = q.meta.get("incorrect_solution") or next((r.text for r in others if not r.correct), None)
    return ContextInputs(
        question=q.prompt,
        answer=q.answer,
        solution=q.solution,
        summary=q.meta.get("summary") or summary,
        correct_example=right,
        incorrect_example=wrong,
    )


def check_context_available(cfg: TeacherConfig, q: TaskQuestion) -> None:
    name, _ = parse_context(cfg.context)
    if name == "solution" and not q.solution:
        raise DiagnoseError(f"teacher {cfg.label}: task questions carry no reference solution")


class TeacherAtNodes:
    """TeacherFn for the estimator: scores each rollout once (one pass per teacher x rollout) and returns the
    teacher's logits at the nodes (the estimator keeps them: EstimateResult.teacher_logits)."""

    def __init__(self, cfg: TeacherConfig, engine, question: TaskQuestion, summary: str | None = None):
        self.cfg, self.engine, self.question, self.summary = cfg, engine, question, summary
        # the estimator sizes rounding noise with it; None (exact arithmetic): the student's precision
        self.roundoff = None if engine.dtype is None else roundoff(engine.dtype)
        self.tokens = 0

    def __call__(self, rollouts, nodes) -> torch.Tensor:
        by_rollout: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            by_rollout.setdefault(n.rollout, []).append(i)
        order = sorted(by_rollout)
        same_q = {r: [x for x in rollouts if x.question == rollouts[r].question] for r in order}
        messages, responses, positions = [], [], []
        for r in order:
            group = same_q[r]
            inputs = context_inputs(self.question, group, group.index(rollouts[r]), self.summary)
            messages.append(build_messages(self.cfg.context, inputs))
            responses.append(rollouts[r].token_ids)
            positions.append([nodes[i].position for i in by_rollout[r]])
        scores = score_rollouts(
            self.engine, messages, responses, positions, payload="logits", teacher_name=self.cfg.label
        )
        out: list[torch.Tensor | None] = [None] * len(nodes)
        for r, sc in zip(order, scores, strict=False):
            self.tokens += sc.prompt_len + len(rollouts[r].token_ids)
            for j, i in enumerate(by_rollout[r]):
                out[i] = sc.logits[j].float()
        return torch.stack(out)
