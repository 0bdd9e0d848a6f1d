"""Turn one question's estimate into rows of the run tables (schemas: diagnose.tables)."""

from __future__ import annotations

import math

import pandas as pd

from ..estimate.stats import unbiased_g_sq
from ..tables import config_label, difficulty_band, schema


def _token_str(tokenizer, tok: int) -> str:
    return tokenizer.decode([int(tok)])


def frames_for_question(
    result, question, task, tokenizer, teacher_proxies: dict, fns: dict, param_cos: dict | None = None
) -> dict:
    rollouts = result.rollouts
    pass_rate = sum(r.correct for r in rollouts) / max(1, len(rollouts))
    band = difficulty_band(pass_rate)
    prompt_text = tokenizer.decode(rollouts[0].prompt_ids) if rollouts else question.prompt
    ro_rows = []
    for r in rollouts:
        ro_rows.append(
            {
                "question_id": question.id,
                "rollout_idx": r.index,
                "prompt": prompt_text,
                "response": r.text,
                "token_ids": [int(t) for t in r.token_ids],
                "tokens": [_token_str(tokenizer, t) for t in r.token_ids],
                "student_logprobs": [float(x) for x in r.logprobs],
                "n_tokens": len(r.token_ids),
                "correct": bool(r.correct),
                "pass_rate": pass_rate,
                "difficulty": band,
                "reference": str(question.answer),
                "extracted_answer": task.final_answer(r.text),
            }
        )
    by_node = {}
    first = next(iter(fns), None)  # student entropy is the same in every teacher's proxies
    node_rows, cand_rows = [], []
    ridx = {r.id: r.index for r in rollouts}
    scores_by_node: dict[str, list[dict]] = {}
    for s in result.scores:
        scores_by_node.setdefault(s["node_id"], []).append(s)
    for rec, _est in zip(result.node_records, result.nodes, strict=False):
        key = (question.id, ridx[rec["rollout_id"]], int(rec["position"]))
        by_node[rec["node_id"]] = key
        cands = rec["candidates"]
        p_obs = next((c["p"] for c in cands if c["token"] == rec["observed"]), float("nan"))
        any_score = (scores_by_node.get(rec["node_id"]) or [{}])[0]
        g_sq = float(any_score.get("g_sq", sum(c["g"] ** 2 for c in cands)))
        noise = any_score.get("noise")
        node_rows.append(
            {
                "question_id": key[0],
                "rollout_idx": key[1],
                "position": key[2],
                "token_id": int(rec["observed"]),
                "token": _token_str(tokenizer, rec["observed"]),
                "p_token": float(p_obs),
                "entropy_student": float(
                    teacher_proxies.get((first, rec["node_id"]), {}).get("entropy_student", math.nan)
                ),
                "v_hat": float(rec["v_hat"]),
                "n_candidates": len(cands),
                "n_continuations": int(sum(c["count"] for c in cands)),
                "degenerate": bool(rec["degenerate"]),
                "weight": float(rec["weight"]),
                "inclusion_prob": float(rec["inclusion_prob"]),
                "negligible": bool(rec["negligible"]),
                "g_sq": g_sq,
                "g_sq_unbiased": float(unbiased_g_sq(g_sq, float(noise))) if noise is not None else None,
            }
        )
        for c in cands:
            cand_rows.append(
                {
                    "question_id": key[0],
                    "rollout_idx": key[1],
                    "position": key[2],
                    "token_id": int(c["token"]),
                    "token": _token_str(tokenizer, c["token"]),
                    "p": float(c["p"]),
                    "q_hat": float(c["q_hat"]) if c["count"] > 0 else float(rec["v_hat"]),
                    "n": int(c["count"]),
                    "successes": int(c["successes"]),
                    "observed": int(c["token"]) == int(rec["observed"]),
                }
            )
    al_rows = []
    for s in result.scores:
        key = by_node[s["node_id"]]
        prox = teacher_proxies.get((s["teacher"], s["node_id"]), {})
        corrected = s.get("cos_full_corrected")
        corrected_s = s.get("cos_support_corrected")
        al_rows.append(
            {
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
                "cos_bias_corrected": corrected if corrected is not None and math.isfinite(corrected) else None,
                "cos_support_bias_corrected": (
                    corrected_s if corrected_s is not None and math.isfinite(corrected_s) else None
                ),
                "teacher_advantage": _nz(s.get("ta")),
                "ta_ci_low": _nz(s.get("ta_lo")),
                "ta_ci_high": _nz(s.get("ta_hi")),
                # The GRPO reference arm (teacher "-") has no teacher distribution: its proxies are null.
                **{
                    k: prox.get(k)
                    for k in ("q_token", "kl_pq", "kl_qp", "js", "tv", "cos_pq", "entropy_student", "entropy_teacher")
                },
                "param_cos": (param_cos or {}).get((s["teacher"], s["objective"], s["node_id"])),
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
        )
    rows = {"rollouts": ro_rows, "nodes": node_rows, "candidates": cand_rows, "alignment": al_rows}
    # an empty list still gets the table's columns (a question whose budget bought no node)
    return {name: pd.DataFrame(r, columns=None if r else schema(name).names) for name, r in rows.items()}


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _nz(x):
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
