"""Top-k restricted divergences, as distillation frameworks implement them to avoid full-vocabulary transfer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import NEEDS_TOPK, Objective, log_probs, masked_logits, topk_mask
from .divergences import rkl_from_logprobs
from .registry import register

SUPPORTS = ("student", "teacher", "union")


def support_mask(student_logits, teacher_logits, k: int, support: str) -> torch.Tensor:
    """The top-k set S: the student's, the teacher's, or their union."""
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {', '.join(SUPPORTS)}, got {support!r}")
    if support == "student":
        return topk_mask(student_logits, k)
    if support == "teacher":
        return topk_mask(teacher_logits, k)
    return topk_mask(student_logits, k) | topk_mask(teacher_logits, k)


def _check_k(k) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


class _TopK:
    """Build-time checks of the top-k objectives' parameters (k, and the support where there is one)."""

    def check_params(self) -> None:
        _check_k(self.params.get("k", 20))
        support = self.params.get("support", "student")
        if support not in SUPPORTS:
            raise ValueError(f"{self.name}: support must be one of {', '.join(SUPPORTS)}, got {support!r}")


@register("rkl_topk", k=20, support="student")
@dataclass(repr=False)
class TopKReverseKL(_TopK, Objective):
    """KL(p~ || q~) with both distributions renormalised on S: d = -p~ (l~ - KL_S) on S, 0 off S."""

    needs = NEEDS_TOPK

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        s = support_mask(student_logits, teacher_logits, _check_k(self.params["k"]), self.params["support"])
        logp = log_probs(masked_logits(student_logits, s))
        logq = log_probs(masked_logits(teacher_logits, s))
        return rkl_from_logprobs(logp, logq)


@register("rkl_topk_unnorm", k=20, support="student")
@dataclass(repr=False)
class UnnormalizedTopKReverseKL(_TopK, Objective):
    """sum_{v in S} p_v (log p_v - log q_v) with full-vocabulary p and q (no renormalisation).

    d_j = -[1{j in S} p_j (l_j + 1) - p_j (sum_S p l + p(S))]: the normaliser couples every logit.
    """

    needs = NEEDS_TOPK

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        s = support_mask(student_logits, teacher_logits, _check_k(self.params["k"]), self.params["support"])
        logp, logq = log_probs(student_logits), log_probs(teacher_logits)
        p = logp.exp()
        p_s = torch.where(s, p, torch.zeros_like(p))
        l = logp - logq
        inner = (p_s * l).sum(-1, keepdim=True) + p_s.sum(-1, keepdim=True)
        return -(p_s * (l + 1.0) - p * inner)


@register("fkl_topk", k=20)
@dataclass(repr=False)
class TopKForwardKL(_TopK, Objective):
    """KL(q~ || p) with the teacher renormalised on its own top-k and the full student: d = q~ - p."""

    needs = NEEDS_TOPK

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        s = topk_mask(teacher_logits, _check_k(self.params["k"]))
        return log_probs(masked_logits(teacher_logits, s)).exp() - log_probs(student_logits).exp()
