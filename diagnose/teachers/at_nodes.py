"""Teachers as the estimator calls them: a TeacherFn(rollouts, nodes) returns the teacher's logits at the nodes,
on the student's own prefixes. Every teacher is made here: `TeacherAtNodes` (a configured teacher under its
context: what `diagnose run` and `validate` score) and `engine_teacher` (an engine on the student's own prompt,
optionally adjusted per prefix: the library's plain teacher and the tests' synthetic ones)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import DiagnoseError
from ..estimate.signal import roundoff
from ..tasks import Question as TaskQuestion
from .contexts import ContextInputs, build_messages, parse_context
from .scoring import score_rollouts
from .spec import TeacherConfig


def engine_teacher(engine, adjust: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None):
    """A teacher that scores the student's own prompt + prefix with another engine (same tokenizer); all nodes
    in one `score` call. Like every TeacherFn it returns the engine's own logits (the Estimator scales them to
    the scoring temperature); `adjust(prefix ids, logits [V]) -> logits [V]` changes them per node first (the
    tests' noisy and Q-informed teachers)."""

    def teacher(rollouts: Sequence, nodes: Sequence) -> torch.Tensor:
        seqs = [rollouts[n.rollout].prompt_ids + rollouts[n.rollout].token_ids for n in nodes]
        cuts = [len(rollouts[n.rollout].prompt_ids) + n.position for n in nodes]
        rows = [sc.logits[0] for sc in engine.score(seqs, [[c] for c in cuts], topk=None)]
        if adjust is not None:
            rows = [adjust(seq[:cut], z) for seq, cut, z in zip(seqs, cuts, rows, strict=True)]
        return torch.stack(rows).float()

    return teacher


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
