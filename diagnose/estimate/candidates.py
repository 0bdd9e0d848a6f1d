"""Candidate sets C(u) = {observed token} ∪ student top-k ∪ each teacher's top-k, as padded id tensors.

Teachers come in as tensors per node: float logits [N, V] (their top-k is taken here) or integer top-k ids
[N, k] (-1 padding allowed). The observed token is listed first: its rollout is one free continuation.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def teacher_topk_ids(payload: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k'] top-k ids of a teacher payload (logits [N, V] or ids [N, k'] passed through, cut to k)."""
    if payload.dtype.is_floating_point:
        k = min(int(k), payload.shape[-1])
        return payload.float().topk(k, dim=-1).indices
    return payload.long()[:, : int(k)]


def candidate_sets(
    student_logits: torch.Tensor,
    observed: Sequence[int] | torch.Tensor,
    teachers: Mapping[str, torch.Tensor] | None = None,
    k_student: int = 4,
    k_teacher: int = 4,
) -> torch.Tensor:
    """[N, K] candidate ids (observed, student top-k, each teacher's top-k), deduplicated, -1 pad."""
    n = student_logits.shape[0]
    parts = [torch.as_tensor(observed, dtype=torch.long).reshape(n, 1)]
    if k_student > 0:
        parts.append(student_logits.float().topk(min(k_student, student_logits.shape[-1]), dim=-1).indices)
    for payload in (teachers or {}).values():
        if k_teacher > 0:
            parts.append(teacher_topk_ids(payload, k_teacher))
    allc = torch.cat(parts, dim=1)
    rows = []
    for i in range(n):
        seen: list[int] = []
        for tok in allc[i].tolist():
            if tok >= 0 and tok not in seen:
                seen.append(tok)
        rows.append(seen)
    width = max(len(r) for r in rows) if rows else 0
    out = torch.full((n, width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out
