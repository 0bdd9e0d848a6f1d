"""diagnose.kernels: fused per-node alignment statistics over large vocabularies (docs/kernels.md).

    >>> from diagnose import kernels, objectives
    >>> objs = [objectives.get("rkl"), objectives.get("fkl"), objectives.parse("jsd:beta=0.5")]
    >>> st = kernels.node_stats(student_logits,      # [N, V], any float dtype (bf16 is fine)
    ...                         teacher_logits,      # [C, N, V], [N, V] or a list of C [N, V] tensors
    ...                         cand_ids,            # [N, K] candidate token ids, -1 = padding
    ...                         g_cand,              # [N, K] g* = p (Q - V) at those ids
    ...                         objs,
    ...                         tokens=None,         # [N] sampled tokens (needed by sampled objectives)
    ...                         advantages=None,     # [N] (grpo_ref only)
    ...                         backend="auto")      # "auto" | "chunked" (= "torch") | "triton" | "reference"
    >>> st.cos_full, st.cos_support, st.dot, st.d_sq, st.d_sq_support   # [C, O, N]
    >>> st.d_cand                                # [C, O, N, K] float64: d at each caller slot (0 at padding)
    >>> st.degenerate                            # [C, O, N]: g* = 0 or |d|^2 <= D_REL_TOL^2 (p_sq + q_sq)
    >>> st.kl_pq, st.kl_qp, st.js, st.tv, st.cos_pq, st.entropy_teacher # [C, N]
    >>> st.lse_student, st.entropy_student, st.g_sq, st.p_sq            # [N]; st.lse_teacher, st.q_sq [C, N]

`node_stats_reference` has the same signature and materialises g* and every d as [N, V] with
diagnose.objectives / diagnose.alignment: it is the ground truth the fused paths are tested against.

Fused objectives: rkl, fkl, jsd (any beta), fkl_clipped, rkl_sampled, rkl_baselined, k1_loss, k3_loss,
grpo_ref (needs advantages), rkl_topk, rkl_topk_unnorm, fkl_topk (any support). Any other objective is
computed by the reference on row chunks (memory O(64 V)). Extra memory of the fused paths is O(N (C + K +
k)) plus one block of logits. "auto" runs Triton on CUDA tensors and the chunked torch path elsewhere;
"triton" on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported. Of candidate ids repeated
in a row the last occurrence counts (for g*; d_cand holds d at that id in every slot). dot, d_sq, d_sq_support,
d_cand, g_sq, p_sq and q_sq are float64: the chunked path computes every element in float64 (inputs rounded to
float32), the Triton kernels in float32 with float64 finishing (see docs/kernels.md for their accuracy).
"""

from .fused import node_stats, resolve_backend
from .reference import dense_candidates, node_stats_reference
from .types import D_REL_TOL, NodeStats

__all__ = ["D_REL_TOL", "NodeStats", "node_stats", "node_stats_reference", "dense_candidates", "resolve_backend"]
