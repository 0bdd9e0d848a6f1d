"""Student rollouts per question, each verified: the on-policy sequences whose prefixes become nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..engines.base import Sample
from .generate import Generator, Request


@dataclass
class EstimateQuestion:
    """What the estimator works on: a prompt (token ids, chat template already applied) and its verifier.
    (A task's question, with its text, reference answer and solution, is diagnose.tasks.Question.)

    `verify` judges a whole response: called with its decoded text (skip_special_tokens=True) when
    verify_on="text", with its token ids when verify_on="ids", or with the Sample when verify_on="sample".
    """

    id: str
    prompt_ids: list[int]
    verify: Callable[..., bool]
    verify_on: str = "text"
    meta: dict = field(default_factory=dict)

    def judge(self, tokenizer, response_ids: Sequence[int], sample: Sample | None = None) -> bool:
        """Verdict on a full response (the node prefix's response tokens + a continuation's tokens)."""
        if self.verify_on == "ids":
            return bool(self.verify(list(response_ids)))
        if self.verify_on == "sample":
            return bool(self.verify(sample))
        return bool(self.verify(tokenizer.decode(list(response_ids), skip_special_tokens=True)))


@dataclass
class Rollout:
    """One verified student rollout: question index/id, rollout index, response ids, log-probs, verdict."""

    question: int
    question_id: str
    index: int
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    correct: bool
    finish_reason: str

    @property
    def id(self) -> str:
        return f"{self.question_id}/{self.index}"


def sample_rollouts(gen: Generator, questions: Sequence[EstimateQuestion], n: int) -> list[Rollout]:
    """n verified rollouts per question (cached by (model, prompt, sampling settings, index))."""
    reqs = [Request(prefix=tuple(q.prompt_ids), token=-1, start=0, count=n) for q in questions]
    out = gen.fetch(reqs)
    rollouts = []
    for qi, (q, samples) in enumerate(zip(questions, out, strict=False)):
        for j, s in enumerate(samples):
            rollouts.append(
                Rollout(
                    question=qi,
                    question_id=str(q.id),
                    index=j,
                    prompt_ids=list(q.prompt_ids),
                    token_ids=list(s.token_ids),
                    logprobs=list(s.logprobs),
                    text=s.text,
                    correct=q.judge(gen.engine.tokenizer, s.token_ids, s),
                    finish_reason=s.finish_reason,
                )
            )
    return rollouts


def group_advantages(rollouts: Sequence[Rollout]) -> list[float]:
    """Per rollout: its reward (1 if correct) minus the mean reward of its question's rollouts: GRPO's
    group-baselined advantage (the reference arm of the diagnosis and of `diagnose validate`)."""
    groups: dict[int, list[float]] = {}
    for r in rollouts:
        groups.setdefault(r.question, []).append(float(r.correct))
    return [float(r.correct) - sum(groups[r.question]) / len(groups[r.question]) for r in rollouts]
