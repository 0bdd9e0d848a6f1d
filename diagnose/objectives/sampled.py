"""Sampled-token objectives: the update uses only the token a the student sampled at the node.

Each is a policy-gradient step A (e_a - p) for some advantage A; `expected_direction` is its exact
expectation over a ~ p, which tests check by enumerating every token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    NEEDS_NONE,
    NEEDS_TOKEN,
    Objective,
    expected_policy_gradient,
    log_probs,
    policy_gradient_direction,
)
from .divergences import rkl_from_logprobs
from .registry import register


def _gather(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return x.gather(-1, tokens.long()[:, None])[:, 0]


class _SampledTokenObjective(Objective):
    needs = NEEDS_TOKEN
    sampled = True

    def advantage(self, logp, logq, tokens) -> torch.Tensor:  # [N]
        raise NotImplementedError

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        logp, logq = log_probs(student_logits), log_probs(teacher_logits)
        return policy_gradient_direction(logp.exp(), tokens, self.advantage(logp, logq, tokens))


@register("rkl_sampled")
@dataclass(repr=False)
class SampledReverseKL(_SampledTokenObjective):
    """Per-token log-ratio as advantage (Thinking Machines OPD): d = -l_a (e_a - p); E[d] = rkl."""

    def advantage(self, logp, logq, tokens):
        return -_gather(logp - logq, tokens)

    def expected_direction(self, student_logits, teacher_logits=None, **kw):
        return rkl_from_logprobs(log_probs(student_logits), log_probs(teacher_logits))


@register("rkl_baselined")
@dataclass(repr=False)
class BaselinedSampledReverseKL(_SampledTokenObjective):
    """Same with a detached KL(p||q) baseline (vOPD): d = -(l_a - KL)(e_a - p); E[d] = rkl."""

    def advantage(self, logp, logq, tokens):
        p = logp.exp()
        kl = (p * (logp - logq)).sum(-1)
        return -(_gather(logp - logq, tokens) - kl)

    def expected_direction(self, student_logits, teacher_logits=None, **kw):
        return rkl_from_logprobs(log_probs(student_logits), log_probs(teacher_logits))


@register("k1_loss")
@dataclass(repr=False)
class K1Loss(_SampledTokenObjective):
    """k1 = log p_a - log q_a differentiated as a loss: d = -(e_a - p); E[d] = 0 (a pure noise term)."""

    def advantage(self, logp, logq, tokens):
        return -torch.ones(logp.shape[0], device=logp.device)

    def expected_direction(self, student_logits, teacher_logits=None, **kw):
        return torch.zeros_like(log_probs(student_logits))


@register("k3_loss")
@dataclass(repr=False)
class K3Loss(_SampledTokenObjective):
    """k3 = r - 1 - log r, r = q_a/p_a, differentiated as a loss: d = (r - 1)(e_a - p); E[d] = q - p."""

    def advantage(self, logp, logq, tokens):
        return torch.exp(_gather(logq - logp, tokens)) - 1.0

    def expected_direction(self, student_logits, teacher_logits=None, **kw):
        return log_probs(teacher_logits).exp() - log_probs(student_logits).exp()


@register("grpo_ref")
@dataclass(repr=False)
class GRPOReference(Objective):
    """Dr. GRPO token term (R - mean R)(e_a - p): the RL reference arm, an unbiased one-sample estimate of g*.

    `direction(z, None, tokens, advantages=[N])`; `expected_direction(z, token_advantages=[N, V])` with
    A_v = Q_v - V gives g* exactly.
    """

    needs = NEEDS_NONE
    sampled = True

    def direction(self, student_logits, teacher_logits=None, tokens=None, advantages=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        if advantages is None:
            raise ValueError("grpo_ref: needs advantages=[N] (reward minus the group's mean reward)")
        logp = log_probs(student_logits)
        return policy_gradient_direction(logp.exp(), tokens, torch.as_tensor(advantages).to(logp.device))

    def expected_direction(self, student_logits, teacher_logits=None, token_advantages=None, **kw):
        if token_advantages is None:
            raise ValueError("grpo_ref: expected_direction needs token_advantages=[N, V]")
        logp = log_probs(student_logits)
        return expected_policy_gradient(logp, logp.exp() * token_advantages.float())
