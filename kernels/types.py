"""NodeStats, the per-node result of the fused kernels and of their reference, and input normalisation."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# d counts as zero (the node is degenerate) where |d|^2 <= D_REL_TOL^2 (sum p^2 + sum q^2): the natural scale
# of a direction over probabilities. Rounding noise of d is ~1e-16 of that scale in float64.
D_REL_TOL = 1e-9


@dataclass
class NodeStats:
    """Per-node alignment sums for C teacher configurations, O objectives and K candidate slots.

    float64: dot = <g*, d>, d_sq = |d|^2, d_sq_support = |d restricted to the candidates|^2 ([C, O, N]),
    d_cand ([C, O, N, K]: d = -dL/dz at each slot of the caller's `cand_ids`, in the caller's order; 0 at
    padding slots (-1); a repeated id holds d at that id in every slot where it appears), g_sq = |g*|^2 and
    p_sq = sum_v p_v^2 ([N]), q_sq = sum_v q_v^2 ([C, N]).
    float32: cos_full, cos_support ([C, O, N]); the proxies kl_pq, kl_qp, js, tv, cos_pq, entropy_teacher
    and lse_teacher ([C, N]); lse_student and entropy_student ([N]).
    bool: degenerate [C, O, N] = g* = 0, or d (or d on the candidates) zero relative to its scale:
    |d|^2 <= D_REL_TOL^2 (p_sq + q_sq) (as `diagnose.alignment.cosines`: either cosine undefined); each
    cosine is 0 where its own norm vanishes. `labels[o]` is objective o's label.
    """

    labels: list
    lse_student: torch.Tensor
    lse_teacher: torch.Tensor
    g_sq: torch.Tensor
    dot: torch.Tensor
    d_sq: torch.Tensor
    d_sq_support: torch.Tensor
    d_cand: torch.Tensor
    p_sq: torch.Tensor
    q_sq: torch.Tensor
    cos_full: torch.Tensor
    cos_support: torch.Tensor
    degenerate: torch.Tensor
    kl_pq: torch.Tensor
    kl_qp: torch.Tensor
    js: torch.Tensor
    tv: torch.Tensor
    cos_pq: torch.Tensor
    entropy_student: torch.Tensor
    entropy_teacher: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor field by name (for comparisons and serialisation)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "labels"}


def finish_cosines(dot, g_sq, d_sq, d_sup, p_sq, q_sq):
    """(cos_full, cos_support, degenerate) from float64 sums: dot, d_sq, d_sup [C, O, N], g_sq and p_sq [N],
    q_sq [C, N]. Degenerate: g* = 0, or |d|^2 or |d on the candidates|^2 <= D_REL_TOL^2 (p_sq + q_sq)."""
    dot, d_sq, d_sup = dot.double(), d_sq.double(), d_sup.double()
    g_sq = g_sq.double().expand_as(dot)
    scale = (D_REL_TOL**2) * (p_sq.double() + q_sq.double())[:, None, :]  # [C, 1, N]
    g_zero = g_sq <= 0
    deg_f, deg_s = g_zero | (d_sq <= scale), g_zero | (d_sup <= scale)
    g_norm = g_sq.clamp_min(0).sqrt()

    def cos(dsq, deg):  # sqrt(a) sqrt(b), not sqrt(a b): no underflow on tiny norms
        c = dot / torch.where(deg, 1.0, g_norm * dsq.clamp_min(0).sqrt())
        return torch.where(deg, 0.0, c).clamp(-1.0, 1.0).float()

    return cos(d_sq, deg_f), cos(d_sup, deg_s), deg_f | deg_s


def teacher_list(teacher_logits) -> list[torch.Tensor]:
    """[C, N, V] tensor, [N, V] tensor (C = 1) or a sequence of [N, V] tensors -> list of [N, V] views."""
    if isinstance(teacher_logits, torch.Tensor):
        if teacher_logits.dim() == 2:
            return [teacher_logits]
        if teacher_logits.dim() == 3:
            return list(teacher_logits.unbind(0))
        raise ValueError(f"teacher logits must be [C, N, V] or [N, V], got {tuple(teacher_logits.shape)}")
    return list(teacher_logits)
