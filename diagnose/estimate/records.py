"""The estimate's result rows, built in one place: one record per node (its candidates, Q-hat, counts, V-hat,
g*) and one score row per node x teacher x objective and per rollout x teacher x objective. The run's tables
(diagnose.pipeline.frames) are built from these."""

from __future__ import annotations

from typing import Sequence

import torch

from .directions import Direction
from .q import NodeEstimate
from .rollouts import Rollout
from .stats import NodeScores, effective_nodes, rollout_cosine

# The NodeScores fields each node score row carries (as floats).
SCORE_FIELDS = (
    "cos_full",
    "cos_full_corrected",
    "cos_full_lo",
    "cos_full_hi",
    "cos_support",
    "cos_support_corrected",
    "cos_support_lo",
    "cos_support_hi",
    "dot",
    "g_sq",
    "noise",
    "d_sq_full",
    "d_sq_support",
    "dot_half0",
    "dot_half1",
)


def node_records(
    estimates: Sequence[NodeEstimate],
    rollouts: Sequence[Rollout],
    value: torch.Tensor,
    g_c: torch.Tensor,
    mask: torch.Tensor,
    counts: torch.Tensor,
    weights: Sequence[float],
    negligible: torch.Tensor,
    degenerate: torch.Tensor,
) -> list[dict]:
    """One record per node: V-hat `value` [N], g* on the candidates `g_c` [N, K] (valid where `mask`), the
    continuation `counts` [N, K], the design weight, and the negligible / degenerate flags."""
    records = []
    for i, e in enumerate(estimates):
        ro = rollouts[e.node.rollout]
        records.append(
            {
                "node_id": e.id,
                "rollout_id": e.rollout_id,
                "question_id": e.question_id,
                "position": e.node.position,
                "length": len(ro.token_ids),
                "observed": e.observed,
                "rollout_correct": ro.correct,
                "v_hat": float(value[i]),
                "continuations": int(counts[i].sum()) - (1 if e.free else 0),
                "weight": weights[i],
                "inclusion_prob": weights.inclusion[i],  # nodes.DesignWeights: not 1 / weight (rescaled)
                "negligible": bool(negligible[i]),
                "degenerate": bool(degenerate[i]),
                "candidates": [
                    {
                        "token": tok,
                        "p": e.p[k],
                        "successes": e.successes[k],
                        "count": e.counts[k],
                        "q_hat": e.q_hat[k],
                        "g": float(g_c[i, k]) if bool(mask[i, k]) else 0.0,
                        "outcomes": list(e.outcomes[k]),
                    }
                    for k, tok in enumerate(e.cand_ids)
                ],
            }
        )
    return records


def score_rows(
    estimates: Sequence[NodeEstimate],
    rollouts: Sequence[Rollout],
    scored: Sequence[tuple[Direction, NodeScores]],
    weights: Sequence[float],
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Per direction and its node scores: node x direction rows, rollout x direction rows (the cosine of g*
    and d concatenated over the rollout's nodes, `stats.rollout_cosine`), and each configuration's effective
    number of nodes (`stats.effective_nodes`), keyed "teacher|objective"."""
    scores, per_rollout, eff = [], {}, {}
    groups = [e.node.rollout for e in estimates]
    for dirn, st in scored:
        tname, oname = dirn.teacher, dirn.objective
        eff[f"{tname}|{oname}"] = effective_nodes(st.g_sq, st.noise, st.degenerate, weights)
        for tag, dsq in (("full", st.d_sq_full), ("support", st.d_sq_support)):
            per = rollout_cosine(st.dot, st.g_sq, dsq, rollouts=groups, noise=st.noise)
            for r, cos, corrected, degenerate in per.itertuples():
                per_rollout.setdefault((rollouts[int(r)].id, tname, oname), {}).update(
                    {
                        f"cos_{tag}": float(cos),
                        f"cos_{tag}_corrected": float(corrected),
                        "degenerate": bool(degenerate),
                    }
                )
        silent = dirn.no_signal  # one list per direction (the property builds it)
        for i, e in enumerate(estimates):
            row = {
                "node_id": e.id,
                "teacher": tname,
                "objective": oname,
                "degenerate": bool(st.degenerate[i]),
                "signal_ratio": dirn.signal[i],
                "no_signal": silent[i],
            }
            for f in SCORE_FIELDS:
                val = getattr(st, f)
                row[f] = float(val[i]) if val is not None else float("nan")
            for f in ("ta", "ta_lo", "ta_hi"):
                val = getattr(st, f)
                row[f] = float(val[i]) if val is not None else float("nan")
            scores.append(row)
    rollout_rows = [
        {"rollout_id": rid, "teacher": t, "objective": o, **vals} for (rid, t, o), vals in per_rollout.items()
    ]
    return scores, rollout_rows, eff
