"""Full-vocabulary divergences: reverse KL, forward KL, generalised JSD, clipped forward KL."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import NEEDS_LOGITS, Objective, log_probs
from .registry import register


def rkl_from_logprobs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """d = -p * (l - KL(p||q)), l = log p - log q; zero wherever p = 0.

    l is shifted by its value at the mode of p first (d is shift-invariant): on peaked rows l - KL then
    comes out of small numbers instead of the difference of two large ones.
    """
    p = logp.exp()
    l = logp - logq
    l = l - l.gather(-1, logp.argmax(-1, keepdim=True))
    kl = (p * l).sum(-1, keepdim=True)
    return -p * (l - kl)


@register("rkl")
@dataclass(repr=False)
class ReverseKL(Objective):
    """KL(p || q) over the full vocabulary (OPD, SDPO, GKD beta=1): d = -p (l - KL)."""

    needs = NEEDS_LOGITS

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        return rkl_from_logprobs(log_probs(student_logits), log_probs(teacher_logits))


@register("fkl")
@dataclass(repr=False)
class ForwardKL(Objective):
    """KL(q || p), i.e. cross-entropy to the teacher (GKD beta=0, OPSD): d = q - p."""

    needs = NEEDS_LOGITS

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        return log_probs(teacher_logits).exp() - log_probs(student_logits).exp()


@register("jsd", beta=0.5)
@dataclass(repr=False)
class GeneralizedJSD(Objective):
    """beta KL(q||m) + (1-beta) KL(p||m), m = beta q + (1-beta) p (GKD/TRL). beta=0 is fkl, beta=1 is rkl.

    d = -(1-beta) p (log(p/m) - KL(p||m)) for 0 < beta < 1; the endpoints are special-cased like TRL does.
    """

    needs = NEEDS_LOGITS

    def check_params(self) -> None:
        beta = float(self.params.get("beta", 0.5))
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd: beta must lie in [0, 1], got {beta:g}")

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        self.check_params()
        beta = float(self.params["beta"])
        logp, logq = log_probs(student_logits), log_probs(teacher_logits)
        if beta == 0.0:
            return logq.exp() - logp.exp()
        if beta == 1.0:
            return rkl_from_logprobs(logp, logq)
        logm = torch.logaddexp(logq + torch.log(torch.tensor(beta)), logp + torch.log(torch.tensor(1 - beta)))
        return (1.0 - beta) * rkl_from_logprobs(logp, logm)


@register("fkl_clipped", clip=1.0)
@dataclass(repr=False)
class ClippedForwardKL(Objective):
    """sum_v min(clip, q_v log(q_v/p_v)) (OPSD). Clipped entries are constant: d = q*1_U - p * q(U)."""

    needs = NEEDS_LOGITS

    def check_params(self) -> None:
        clip = float(self.params.get("clip", 1.0))
        if not clip > 0:
            raise ValueError(f"fkl_clipped: clip must be > 0, got {clip:g}")

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        self._check(student_logits, teacher_logits, tokens)
        clip = float(self.params["clip"])
        logp, logq = log_probs(student_logits), log_probs(teacher_logits)
        p, q = logp.exp(), logq.exp()
        term = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q))
        q_unclipped = torch.where(term < clip, q, torch.zeros_like(q))
        return q_unclipped - p * q_unclipped.sum(-1, keepdim=True)
