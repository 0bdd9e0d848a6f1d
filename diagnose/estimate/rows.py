"""An estimate laid out as rows of the run tables (schemas: diagnose.tables). The one row layout: the run's
Parquet files, `EstimateResult.tables()` and the exact truth the tests compare against all come from here."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import pandas as pd

from ..tables import config_label, difficulty_band, schema
from .stats import unbiased_g_sq

PROXY_COLUMNS = ("q_token", "kl_pq", "kl_qp", "js", "tv", "cos_pq", "entropy_student", "entropy_teacher")
RUN_TABLES = ("rollouts", "nodes", "candidates", "alignment")


def table_rows(
    result,
    decode: Callable[[Sequence[int]], str] | None = None,
    final_answer: Callable[[str], str | None] | None = None,
    references: Mapping[str, str] | None = None,
    proxies: Mapping | None = None,
    param_cos: Mapping | None = None,
) -> dict[str, list[dict]]:
    """Rows of the rollouts, nodes, candidates and alignment tables for every question of `result`.

    The text columns (prompt, token strings, reference, extracted answer) come only with `decode` (token ids ->
    text), `final_answer` and `references` (question id -> reference answer); the proxy columns only with
    `proxies` (`EstimateResult.proxies()`), and `param_cos` ((teacher, objective, node id) -> cosine) only when
    given. Columns left out are null in the run's tables."""
    rollouts = result.rollouts
    verdicts: dict[str, list[bool]] = {}
    for r in rollouts:
        verdicts.setdefault(r.question_id, []).append(bool(r.correct))
    pass_rate = {q: sum(v) / max(1, len(v)) for q, v in verdicts.items()}
    prompts: dict[str, str] = {}
    ro_rows = []
    for r in rollouts:
        row = {
            "question_id": r.question_id,
            "rollout_idx": r.index,
            "response": r.text,
            "token_ids": [int(t) for t in r.token_ids],
            "student_logprobs": [float(x) for x in r.logprobs],
            "n_tokens": len(r.token_ids),
            "correct": bool(r.correct),
            "pass_rate": pass_rate[r.question_id],
            "difficulty": str(difficulty_band(pass_rate[r.question_id])),
        }
        if decode is not None:
            if r.question_id not in prompts:
                prompts[r.question_id] = decode(r.prompt_ids)
            row["prompt"] = prompts[r.question_id]
            row["tokens"] = [decode([int(t)]) for t in r.token_ids]
        if references is not None:
            row["reference"] = str(references[r.question_id])
        if final_answer is not None:
            row["extracted_answer"] = final_answer(r.text)
        ro_rows.append(row)

    keys: dict[str, tuple[str, int, int]] = {}
    rollout_of = {r.id: r for r in rollouts}
    first_score: dict[str, dict] = {}
    for s in result.scores:
        first_score.setdefault(s["node_id"], s)
    # the student's entropy is the same in every teacher's proxies: take it from the first that has the node
    entropy: dict[str, float] = {}
    for (_teacher, node_id), prox in (proxies or {}).items():
        entropy.setdefault(node_id, prox.get("entropy_student", math.nan))
    node_rows, cand_rows = [], []
    for rec in result.node_records:
        ro = rollout_of[rec["rollout_id"]]
        key = (ro.question_id, ro.index, int(rec["position"]))
        keys[rec["node_id"]] = key
        cands = rec["candidates"]
        p_obs = next((c["p"] for c in cands if c["token"] == rec["observed"]), float("nan"))
        score = first_score.get(rec["node_id"], {})
        g_sq = float(score.get("g_sq", sum(c["g"] ** 2 for c in cands)))
        noise = score.get("noise")
        row = {
            "question_id": key[0],
            "rollout_idx": key[1],
            "position": key[2],
            "token_id": int(rec["observed"]),
            "p_token": float(p_obs),
            "v_hat": float(rec["v_hat"]),
            "n_candidates": len(cands),
            "n_continuations": int(sum(c["count"] for c in cands)),
            "degenerate": bool(rec["degenerate"]),
            "weight": float(rec["weight"]),
            "inclusion_prob": float(rec["inclusion_prob"]),
            "negligible": bool(rec["negligible"]),
            "g_sq": g_sq,
            # a node no teacher scored has no noise term: its unbiased |g*|^2 is unknown
            "g_sq_unbiased": float(unbiased_g_sq(g_sq, float(noise))) if noise is not None else None,
        }
        if decode is not None:
            row["token"] = decode([int(rec["observed"])])
        if proxies is not None:
            row["entropy_student"] = float(entropy.get(rec["node_id"], math.nan))
        node_rows.append(row)
        for c in cands:
            cand = {
                "question_id": key[0],
                "rollout_idx": key[1],
                "position": key[2],
                "token_id": int(c["token"]),
                "p": float(c["p"]),
                # a candidate without continuations is scored at the node's value (its g* entry is 0)
                "q_hat": float(c["q_hat"]) if c["count"] > 0 else float(rec["v_hat"]),
                "n": int(c["count"]),
                "successes": int(c["successes"]),
                "observed": int(c["token"]) == int(rec["observed"]),
            }
            if decode is not None:
                cand["token"] = decode([int(c["token"])])
            cand_rows.append(cand)

    al_rows = []
    for s in result.scores:
        key = keys[s["node_id"]]
        row = {
            "question_id": key[0],
            "rollout_idx": key[1],
            "position": key[2],
            "config": config_label(s["teacher"], s["objective"]),
            "teacher": s["teacher"],
            "objective": s["objective"],
            "cos_full": s["cos_full"],
            "cos_full_ci_low": s["cos_full_lo"],
            "cos_full_ci_high": s["cos_full_hi"],
            "cos_support": s["cos_support"],
            "cos_support_ci_low": s["cos_support_lo"],
            "cos_support_ci_high": s["cos_support_hi"],
            "cos_bias_corrected": _finite(s.get("cos_full_corrected")),
            "cos_support_bias_corrected": _finite(s.get("cos_support_corrected")),
            # undefined (no teacher probabilities) reads as no advantage
            "teacher_advantage": _nz(s.get("ta")),
            "ta_ci_low": _nz(s.get("ta_lo")),
            "ta_ci_high": _nz(s.get("ta_hi")),
            "dot": s["dot"],
            "dot_half0": _finite(s.get("dot_half0")),
            "dot_half1": _finite(s.get("dot_half1")),
            "d_sq": s["d_sq_full"],
            "d_sq_support": s["d_sq_support"],
            "weight": 1.0,
            "degenerate": bool(s["degenerate"]),
            "signal_ratio": float(s.get("signal_ratio", math.inf)),
            "no_signal": bool(s.get("no_signal", False)),
        }
        if proxies is not None:
            # The GRPO reference arm (teacher "-") has no teacher distribution: its proxies are null.
            prox = proxies.get((s["teacher"], s["node_id"]), {})
            row.update({k: prox.get(k) for k in PROXY_COLUMNS})
        if param_cos is not None:
            row["param_cos"] = param_cos.get((s["teacher"], s["objective"], s["node_id"]))
        al_rows.append(row)
    return {"rollouts": ro_rows, "nodes": node_rows, "candidates": cand_rows, "alignment": al_rows}


def frames(rows: Mapping[str, list[dict]]) -> dict[str, pd.DataFrame]:
    """The rows as DataFrames; an empty table still gets its schema's columns (a question that bought no node)."""
    return {name: pd.DataFrame(r, columns=None if r else schema(name).names) for name, r in rows.items()}


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _nz(x):
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
