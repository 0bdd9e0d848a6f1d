"""Ground truth for the fused kernels: materialise g* and every direction d as [N, V] and reuse the core code.

Memory is several [N, V] float32 tensors per objective; use it on small inputs, or to check the kernels.
"""

from __future__ import annotations

import torch

from diagnose import alignment

from .types import NodeStats, teacher_list


def dense_candidates(cand_ids: torch.Tensor, g_cand: torch.Tensor, vocab: int):
    """(g* [N, V] float32, candidate mask [N, V]) from ids [N, K] (-1 = padding) and values [N, K].

    Only valid ids are written, so padding can never overwrite a real candidate at id 0; of repeated ids the
    last occurrence counts (deterministically), as in `diagnose.ideal.ideal_gradient`.
    """
    ids = cand_ids.long()
    later = (ids[:, :, None] == ids[:, None, :]).triu(1).any(-1)  # a later slot repeats this id
    rows, cols = torch.nonzero((ids >= 0) & ~later, as_tuple=True)
    n = ids.shape[0]
    g = torch.zeros(n, vocab, dtype=torch.float32, device=ids.device)
    mask = torch.zeros(n, vocab, dtype=torch.bool, device=ids.device)
    g[rows, ids[rows, cols]] = g_cand.float()[rows, cols]
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
    g, mask = dense_candidates(cand_ids, g_cand, vocab)
    g_sq = (g * g).sum(-1)
    kw = {} if advantages is None else {"advantages": advantages}
    dot, d_sq, d_sup, cos_f, cos_s, degen = ([] for _ in range(6))
    prox: dict[str, list] = {}
    for zt in teachers:
        rows = [[] for _ in range(6)]
        for obj in objectives:
            d = obj.direction(student_logits, zt, tokens, **kw).float()
            cos = alignment.cosines(g, d, mask)
            d_c = torch.where(mask, d, torch.zeros_like(d))
            for acc, val in zip(
                rows,
                (
                    (g * d).sum(-1),
                    (d * d).sum(-1),
                    (d_c * d_c).sum(-1),
                    cos.full,
                    cos.support,
                    cos.degenerate,
                ),
                strict=True,
            ):
                acc.append(val)
            del d, d_c
        for acc, r in zip((dot, d_sq, d_sup, cos_f, cos_s, degen), rows, strict=True):
            acc.append(torch.stack(r) if r else torch.zeros(0, n, device=g.device))
        for key, val in alignment.proxies(student_logits, zt).items():
            prox.setdefault(key, []).append(val)
    ent_s = prox.pop("entropy_student")[0]
    return NodeStats(
        labels=[o.label for o in objectives],
        lse_student=torch.logsumexp(student_logits.float(), -1),
        lse_teacher=torch.stack([torch.logsumexp(zt.float(), -1) for zt in teachers]),
        g_sq=g_sq,
        dot=torch.stack(dot),
        d_sq=torch.stack(d_sq),
        d_sq_support=torch.stack(d_sup),
        cos_full=torch.stack(cos_f),
        cos_support=torch.stack(cos_s),
        degenerate=torch.stack(degen),
        kl_pq=torch.stack(prox["kl_pq"]),
        kl_qp=torch.stack(prox["kl_qp"]),
        js=torch.stack(prox["js"]),
        tv=torch.stack(prox["tv"]),
        cos_pq=torch.stack(prox["cos_pq"]),
        entropy_student=ent_s,
        entropy_teacher=torch.stack(prox["entropy_teacher"]),
    )
