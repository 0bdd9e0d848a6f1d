"""The ideal per-token gradient g* = p * (Q - V): the logit update that most raises the chance of success.

Q is known only on a candidate set C (targeted rollouts); off C we set Q := V, so g* is zero there. V then
solves V = sum_C p_k Q_k + (1 - p(C)) V, i.e. V = sum_C p_k Q_k / p(C): the success rate of the student's
policy conditioned on drawing from C. With C the whole vocabulary this is the usual V = sum_k p_k Q_k.

`sparse_ideal` is the one implementation (float64, on the candidates); every figure the tool reports comes
from it. `ideal_gradient` lays it out over the whole vocabulary for callers that hold full logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objectives.base import log_probs

EPS = 1e-20


def sparse_ideal(p, q, mask, exact_ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """g* [..., K] and V [...] (float64) from the student's probabilities p and Q on the candidates
    [..., K] (mask False = not a candidate: padding, or a candidate without outcomes, where Q := V).

    exact_ties: where every candidate has the same Q, V is that Q exactly and g* exactly zero, not round-off
    (what node records show; the scores zero those nodes themselves and leave replicates untouched)."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    p = torch.where(mask, torch.as_tensor(p, dtype=torch.float64), 0.0)
    q = torch.as_tensor(q, dtype=torch.float64)
    mass = p.sum(-1)
    v = (p * q).sum(-1) / mass.clamp_min(EPS)
    if exact_ties:
        hi = torch.where(mask, q, -torch.inf).amax(-1)
        tied = hi == torch.where(mask, q, torch.inf).amin(-1)
        v = torch.where(tied, hi, v)
    g = torch.where(mask, p * (q - v[..., None]), 0.0)  # exactly 0 on tied rows, where q - v is
    return g, v


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
    """g* and V from student logits [N, V], candidate ids [N, K] (-1 = padding) and Q estimates [N, K]:
    `sparse_ideal` over the whole vocabulary, with the candidate set as its mask.

    Duplicate candidate ids in a row must carry the same Q (the last one wins otherwise).
    """
    if student_logits.dim() != 2 or cand_ids.shape != q_values.shape or cand_ids.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"shapes do not fit: logits {tuple(student_logits.shape)}, candidates {tuple(cand_ids.shape)}, "
            f"Q {tuple(q_values.shape)}"
        )
    vocab = student_logits.shape[1]
    p = log_probs(student_logits).exp()
    cand_ids = cand_ids.to(p.device)
    mask = candidate_mask(cand_ids, vocab)
    q_dense = scatter_candidates(cand_ids, q_values.to(p.device, torch.float64), vocab, 0.0)
    g, value = sparse_ideal(p, q_dense, mask, exact_ties=True)
    return Ideal(g=g.float(), value=value.float(), candidates=mask)
