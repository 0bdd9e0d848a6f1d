"""The rollout explorer's data: a readable subset of rollouts with per-token alignment, node details and
candidate tokens, as the JSON the report's script draws."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .style import to_num


def _pick_rollouts(rollouts: pd.DataFrame, max_rollouts: int) -> pd.DataFrame:
    """Up to max_rollouts rollouts, alternating correct and incorrect ones, in question order."""
    r = rollouts.sort_values(["question_id", "rollout_idx"])
    if len(r) <= max_rollouts:
        return r
    good, bad = r[r["correct"]], r[~r["correct"]]
    k_bad = min(len(bad), max_rollouts // 2)
    k_good = min(len(good), max_rollouts - k_bad)
    k_bad = min(len(bad), max_rollouts - k_good)
    pick = pd.concat(
        [
            good.iloc[np.linspace(0, len(good) - 1, k_good).astype(int)] if k_good else good.iloc[:0],
            bad.iloc[np.linspace(0, len(bad) - 1, k_bad).astype(int)] if k_bad else bad.iloc[:0],
        ]
    )
    return pick.sort_values(["question_id", "rollout_idx"])


def explorer_data(rollouts, nodes, candidates, alignment, configs, max_rollouts=60) -> list[dict[str, Any]]:
    """Per-rollout data for the explorer (tokens, nodes, candidates, per-config cosines), JSON-ready."""
    picked = _pick_rollouts(rollouts, max_rollouts)
    keys = set(zip(picked["question_id"], picked["rollout_idx"], strict=True))

    def subset(df):
        if df is None:
            return {}
        mask = [k in keys for k in zip(df["question_id"], df["rollout_idx"], strict=True)]
        return dict(
            tuple(df[np.asarray(mask, dtype=bool)].groupby(["question_id", "rollout_idx"], sort=False))
        )

    a_by, n_by, c_by = subset(alignment), subset(nodes), subset(candidates)
    cidx = {c: i for i, c in enumerate(configs)}
    out = []
    for r in picked.itertuples(index=False):
        key = (r.question_id, r.rollout_idx)
        a = a_by.get(key)
        nd = n_by.get(key)
        if nd is not None:
            nd = nd.sort_values("position")
            pos = nd["position"].astype(int).tolist()
            v = [to_num(x) for x in nd["v_hat"]]
            deg = [bool(x) for x in nd["degenerate"]]
        else:
            pos = sorted(set(a["position"].astype(int))) if a is not None else []
            v = [None] * len(pos)
            deg = [bool(a[a["position"] == p]["degenerate"].all()) for p in pos]
        at = {p: i for i, p in enumerate(pos)}
        cand = [[] for _ in pos]
        qobs, sobs, nobs = [None] * len(pos), [0] * len(pos), [0] * len(pos)
        c = c_by.get(key)
        if c is not None:
            for row in c.sort_values(["position", "p"], ascending=[True, False]).itertuples(index=False):
                i = at.get(int(row.position))
                if i is None:
                    continue
                cand[i].append(
                    [
                        row.token,
                        to_num(row.p),
                        to_num(row.q_hat),
                        int(row.successes),
                        int(row.n),
                        bool(row.observed),
                        None if pd.isna(row.source) else str(row.source),
                    ]
                )
                if row.observed:
                    qobs[i], sobs[i], nobs[i] = to_num(row.q_hat), int(row.successes), int(row.n)
        per_cfg = {}
        if a is not None:
            for config, g in a.groupby("config", sort=False):
                g = g.set_index("position").reindex(pos)
                per_cfg[str(cidx[config])] = {
                    k: [to_num(x) for x in g[col]]
                    for k, col in (
                        ("f", "cos_full"),
                        ("fl", "cos_full_ci_low"),
                        ("fh", "cos_full_ci_high"),
                        ("s", "cos_support"),
                        ("sl", "cos_support_ci_low"),
                        ("sh", "cos_support_ci_high"),
                        ("q", "q_token"),
                        ("ta", "teacher_advantage"),
                    )
                }
        tokens = [str(t) for t in r.tokens]
        lp = [to_num(x) for x in r.student_logprobs]
        out.append(
            dict(
                qid=str(r.question_id),
                idx=int(r.rollout_idx),
                correct=bool(r.correct),
                pass_rate=to_num(r.pass_rate),
                band=str(r.difficulty),
                prompt=str(r.prompt),
                tokens=tokens,
                lp=lp,
                node_at={str(p): i for p, i in at.items()},
                nodes=dict(pos=pos, v=v, deg=deg, cand=cand, qobs=qobs, sobs=sobs, nobs=nobs),
                cfg=per_cfg,
            )
        )
    return out
