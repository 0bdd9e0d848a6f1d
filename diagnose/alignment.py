"""Alignment between the ideal gradient g* and a distillation direction d, teacher advantage, and proxies.

Every score here is per node (rows of [N, V] tensors); the rollout-level cosine, which concatenates the nodes of a
rollout, is diagnose.estimate.stats.rollout_cosine. A node whose g* is zero (all Q equal) has no defined cosine: it
is flagged `degenerate` and its cosine is reported as 0.0, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objectives.base import log_probs

EPS = 1e-20


@dataclass
class Cosines:
    """Per-node cosines on the two supports, and the flag for nodes where it is undefined."""

    full: torch.Tensor  # cos(g*, d) with d over the whole vocabulary
    support: torch.Tensor  # cos(g*, d restricted to the candidate set)
    degenerate: torch.Tensor  # bool: g* = 0 (or d = 0): cosine undefined, reported as 0


def safe_cosine(dot: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor):
    """dot / sqrt(a_sq b_sq), 0 where either norm vanishes; returns (cosine, degenerate flag)."""
    denom = (a_sq.clamp_min(0) * b_sq.clamp_min(0)).sqrt()
    degenerate = denom <= EPS
    cos = torch.where(degenerate, torch.zeros_like(dot), dot / denom.clamp_min(EPS))
    return cos.clamp(-1.0, 1.0), degenerate


def cosines(g: torch.Tensor, d: torch.Tensor, candidates: torch.Tensor) -> Cosines:
    """cos(g*, d) on `full` and `support` (d restricted to the boolean candidate mask [N, V])."""
    g, d = g.double(), d.double()  # sums in float64 (an oracle must not round where the kernels do not)
    dot = (g * d).sum(-1)  # g* is zero off the candidates, so the dot is the same on both supports
    g_sq = (g * g).sum(-1)
    full, deg_full = safe_cosine(dot, g_sq, (d * d).sum(-1))
    d_c = torch.where(candidates, d, torch.zeros_like(d))
    support, deg_support = safe_cosine(dot, g_sq, (d_c * d_c).sum(-1))
    return Cosines(full=full, support=support, degenerate=deg_full | deg_support)


def teacher_advantage(student_logits, teacher_logits, q_dense: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """TA = sum_k (q_k - p_k)(Q_k - V): does the teacher put more mass than the student on tokens that succeed?

    `q_dense` [N, V] holds Q on the candidates and V elsewhere (so those entries contribute nothing).
    """
    p = log_probs(student_logits).exp()
    q = log_probs(teacher_logits).exp()
    return ((q - p) * (q_dense.float() - value.float()[:, None])).sum(-1)


def proxies(student_logits, teacher_logits) -> dict[str, torch.Tensor]:
    """Cheap full-vocabulary teacher/student discrepancies per node (candidates for predicting alignment)."""
    logp, logq = log_probs(student_logits), log_probs(teacher_logits)
    p, q = logp.exp(), logq.exp()
    logm = torch.logaddexp(logp, logq) - torch.log(torch.tensor(2.0))
    return {
        "kl_pq": (p * (logp - logq)).sum(-1),
        "kl_qp": (q * (logq - logp)).sum(-1),
        "js": 0.5 * (p * (logp - logm)).sum(-1) + 0.5 * (q * (logq - logm)).sum(-1),
        "tv": 0.5 * (p - q).abs().sum(-1),
        "cos_pq": safe_cosine((p * q).sum(-1), (p * p).sum(-1), (q * q).sum(-1))[0],
        "entropy_student": -(p * logp).sum(-1),
        "entropy_teacher": -(q * logq).sum(-1),
    }
