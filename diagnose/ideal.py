"""The ideal per-token gradient g* = p * (Q - V): the logit update that most raises the chance of success.

Q is known only on a candidate set C (targeted rollouts); off C we set Q := V, so g* is zero there. V then
solves V = sum_C p_k Q_k + (1 - p(C)) V, i.e. V = sum_C p_k Q_k / p(C): the success rate of the student's
policy conditioned on drawing from C. With C the whole vocabulary this is the usual V = sum_k p_k Q_k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objectives.base import log_probs


@dataclass
class Ideal:
    """g* [N, V] (float32, zero off the candidates), V [N], and the candidate mask [N, V]."""

    g: torch.Tensor
    value: torch.Tensor
    candidates: torch.Tensor


def candidate_mask(cand_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """[N, K] token ids (padded with -1) -> boolean [N, V] mask."""
    ids = cand_ids.long()
    # Padding goes to a spare column: scattering it onto token 0 would erase a real candidate 0.
    ids = torch.where(ids >= 0, ids, vocab)
    mask = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.bool, device=ids.device)
    return mask.scatter_(1, ids, True)[:, :vocab]


def ideal_gradient(student_logits: torch.Tensor, cand_ids: torch.Tensor, q_values: torch.Tensor) -> Ideal:
    """g* and V from student logits [N, V], candidate ids [N, K] (-1 = padding) and Q estimates [N, K].

    Duplicate candidate ids in a row must carry the same Q (the last one wins otherwise).
    """
    if student_logits.dim() != 2 or cand_ids.shape != q_values.shape or cand_ids.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"shapes do not fit: logits {tuple(student_logits.shape)}, candidates {tuple(cand_ids.shape)}, "
            f"Q {tuple(q_values.shape)}"
        )
    n, vocab = student_logits.shape
    p = log_probs(student_logits).exp()
    mask = candidate_mask(cand_ids, vocab)
    q_dense = torch.zeros(n, vocab + 1, device=p.device).scatter_(
        1, torch.where(cand_ids >= 0, cand_ids.long(), vocab), q_values.float()
    )[:, :vocab]
    q_dense = torch.where(mask, q_dense, torch.zeros_like(q_dense))
    p_c = torch.where(mask, p, torch.zeros_like(p))
    mass = p_c.sum(-1)
    value = torch.where(mass > 0, (p_c * q_dense).sum(-1) / mass.clamp_min(1e-30), q_dense.sum(-1) * 0)
    g = p_c * (q_dense - value[:, None])
    return Ideal(g=g, value=value, candidates=mask)
