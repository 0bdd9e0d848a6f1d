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
    return scatter_candidates(cand_ids, torch.ones_like(cand_ids, dtype=torch.bool), vocab, False)


def scatter_candidates(cand_ids: torch.Tensor, values: torch.Tensor, vocab: int, fill) -> torch.Tensor:
    """Dense [N, V] tensor holding `values` at the candidate ids and `fill` elsewhere; -1 ids are dropped.

    Padding is routed to a spare column V (then cut), so it can never overwrite a real id's value.
    """
    ids = cand_ids.long()
    ids = torch.where(ids >= 0, ids, torch.full_like(ids, vocab))
    out = torch.full((ids.shape[0], vocab + 1), fill, dtype=values.dtype, device=ids.device)
    return out.scatter_(1, ids, values)[:, :vocab]


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
    q_dense = scatter_candidates(cand_ids, q_values.float().to(p.device), vocab, 0.0)
    p_c = torch.where(mask, p, torch.zeros_like(p))
    mass = p_c.sum(-1)
    value = torch.where(mass > 0, (p_c * q_dense).sum(-1) / mass.clamp_min(1e-30), torch.zeros_like(mass))
    # All candidates equal (or a single one): V is that Q exactly, so g* is exactly zero, not round-off.
    q_max = torch.where(mask, q_dense, torch.full_like(q_dense, -1.0)).amax(-1)
    q_min = torch.where(mask, q_dense, torch.full_like(q_dense, 2.0)).amin(-1)
    value = torch.where(q_max == q_min, q_max, value)
    g = p_c * (q_dense - value[:, None])
    return Ideal(g=g, value=value, candidates=mask)
