"""NodeStats, the per-node result of the fused kernels and of their reference, and input normalisation."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class NodeStats:
    """Per-node alignment sums for C teacher configurations and O objectives (float32 unless noted).

    Shapes: [C, O, N] for dot = <g*, d>, d_sq = |d|^2, d_sq_support = |d restricted to the candidates|^2,
    cos_full, cos_support and degenerate (bool); [C, N] for the proxies and lse_teacher; [N] for g_sq,
    lse_student and entropy_student. `labels[o]` is objective o's label.
    """

    labels: list
    lse_student: torch.Tensor
    lse_teacher: torch.Tensor
    g_sq: torch.Tensor
    dot: torch.Tensor
    d_sq: torch.Tensor
    d_sq_support: torch.Tensor
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


def teacher_list(teacher_logits) -> list[torch.Tensor]:
    """[C, N, V] tensor, [N, V] tensor (C = 1) or a sequence of [N, V] tensors -> list of [N, V] views."""
    if isinstance(teacher_logits, torch.Tensor):
        if teacher_logits.dim() == 2:
            return [teacher_logits]
        if teacher_logits.dim() == 3:
            return list(teacher_logits.unbind(0))
        raise ValueError(f"teacher logits must be [C, N, V] or [N, V], got {tuple(teacher_logits.shape)}")
    return list(teacher_logits)
