"""Ground truth for the fused kernels: materialise g* and every direction d as [N, V] and reuse the core code.

Memory is several [N, V] float32 tensors per objective; use it on small inputs, or to check the kernels.
d keeps the dtype the objectives give (float32; float64 where their log-probs are float64, as under the
tests' float64 oracle); the sums over d are taken in float64.
"""

from __future__ import annotations

import torch

from diagnose import alignment
from diagnose.objectives import base as objective_base

from .types import NodeStats, finish_cosines, teacher_list


def dense_candidates(cand_ids: torch.Tensor, g_cand: torch.Tensor, vocab: int):
    """(g* [N, V] float32, candidate mask [N, V]) from ids [N, K] (-1 = padding) and values [N, K].

    Only valid ids are written, so padding can never overwrite a real candidate at id 0; of repeated ids the
    last occurrence counts (deterministically), as in `diagnose.ideal.ideal_gradient`. float64 values stay
    float64.
    """
    ids = cand_ids.long()
    later = (ids[:, :, None] == ids[:, None, :]).triu(1).any(-1)  # a later slot repeats this id
    rows, cols = torch.nonzero((ids >= 0) & ~later, as_tuple=True)
    n = ids.shape[0]
    dtype = torch.float64 if g_cand.dtype == torch.float64 else torch.float32
    g = torch.zeros(n, vocab, dtype=dtype, device=ids.device)
    mask = torch.zeros(n, vocab, dtype=torch.bool, device=ids.device)
    g[rows, ids[rows, cols]] = g_cand.to(dtype)[rows, cols]
    mask[rows, ids[rows, cols]] = True
    return g, mask


def node_stats_reference(
    student_logits: torch.Tensor,
    teacher_logits,
    cand_ids: torch.Tensor,
    g_cand: torch.Tensor,
    objectives,
    tokens: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
) -> NodeStats:
    """Same contract as `node_stats`, computed with diagnose.objectives/alignment on dense [N, V] tensors."""
    teachers = teacher_list(teacher_logits)
    n, vocab = student_logits.shape
    f64 = torch.float64
    g, mask = dense_candidates(cand_ids, g_cand, vocab)
    g = g.to(f64)
    g_sq = (g * g).sum(-1)
    slots = cand_ids.long().clamp_min(0)
    kw = {} if advantages is None else {"advantages": advantages}
    p = objective_base.log_probs(student_logits).exp()
    p_sq = (p * p).sum(-1, dtype=f64)
    del p
    dot, d_sq, d_sup, d_cand, q_sq = ([] for _ in range(5))
    prox: dict[str, list] = {}
    for zt in teachers:
        q = objective_base.log_probs(zt).exp()
        q_sq.append((q * q).sum(-1, dtype=f64))
        del q
        rows = [[] for _ in range(4)]
        for obj in objectives:
            d = obj.direction(student_logits, zt, tokens, **kw)
            d = d.to(f64 if d.dtype == f64 else torch.float32)
            d_c = torch.where(mask, d, torch.zeros_like(d))
            for acc, val in zip(
                rows,
                (
                    (g * d).sum(-1, dtype=f64),
                    (d * d).sum(-1, dtype=f64),
                    (d_c * d_c).sum(-1, dtype=f64),
                    torch.where(cand_ids >= 0, d.gather(1, slots), 0.0).to(f64),
                ),
                strict=True,
            ):
                acc.append(val)
            del d, d_c
        for acc, r, shape in zip(
            (dot, d_sq, d_sup, d_cand), rows, ((n,),) * 3 + (tuple(cand_ids.shape),), strict=True
        ):
            acc.append(torch.stack(r) if r else torch.zeros(0, *shape, dtype=f64, device=g.device))
        for key, val in alignment.proxies(student_logits, zt).items():
            prox.setdefault(key, []).append(val)
    ent_s = prox.pop("entropy_student")[0]
    dot, d_sq, d_sup, q_sq = torch.stack(dot), torch.stack(d_sq), torch.stack(d_sup), torch.stack(q_sq)
    cos_f, cos_s, degenerate = finish_cosines(dot, g_sq, d_sq, d_sup, p_sq, q_sq)
    return NodeStats(
        labels=[o.label for o in objectives],
        lse_student=torch.logsumexp(student_logits.float(), -1),
        lse_teacher=torch.stack([torch.logsumexp(zt.float(), -1) for zt in teachers]),
        g_sq=g_sq,
        dot=dot,
        d_sq=d_sq,
        d_sq_support=d_sup,
        d_cand=torch.stack(d_cand),
        p_sq=p_sq,
        q_sq=q_sq,
        cos_full=cos_f,
        cos_support=cos_s,
        degenerate=degenerate,
        kl_pq=torch.stack(prox["kl_pq"]),
        kl_qp=torch.stack(prox["kl_qp"]),
        js=torch.stack(prox["js"]),
        tv=torch.stack(prox["tv"]),
        cos_pq=torch.stack(prox["cos_pq"]),
        entropy_student=ent_s,
        entropy_teacher=torch.stack(prox["entropy_teacher"]),
    )
