"""Exact truth for validating the estimator: the same figures with Q-hat replaced by the exact Q.

On an engine that knows Q exactly (the exact engine's `exact_values`), `exact_result(est)` recomputes every
score of a finished Estimator at the same nodes, candidates, directions and weights with Q-hat := Q and no
noise, so an estimate and its truth differ only by what the estimator is responsible for. `summary_inputs`
lays an EstimateResult out as the run tables that `diagnose.report.summary.summarize` reads, so summary
figures (pooled alignment, splits, margins) can be compared with their exact values as well.
"""

from __future__ import annotations

import copy
import hashlib
import random

import pandas as pd
import torch

from ..report.tables import difficulty_band
from .nodes import Node
from .pipeline import EstimateResult, Estimator
from .q import NodeEstimate
from .rollouts import EstimateQuestion


def exact_q(est: Estimator, e: NodeEstimate) -> torch.Tensor:
    """Exact Q on a node's candidates under the estimator's own policy (temperature, top_p, length limit)."""
    ro = est.rollouts[e.node.rollout]
    q, _ = est.engine.exact_values(
        ro.prompt_ids + ro.token_ids[: e.node.position],
        est.cfg.temperature,
        est.cfg.top_p,
        est.cfg.max_new_tokens,
    )
    return q[torch.tensor(e.cand_ids, dtype=torch.long)].double()


def exact_result(est: Estimator, n_boot: int = 10) -> EstimateResult:
    """The estimator's result with every candidate's Q-hat set to the exact Q (one noiseless 'outcome').

    A candidate's outcome list holds the single value Q, so Q-hat = Q and the noise term (which needs two
    outcomes) is 0; node-level intervals are meaningless here and computed with few replicates.
    """
    truth = copy.copy(est)
    truth.cfg = copy.copy(est.cfg)
    truth.cfg.n_boot = n_boot
    truth.estimates = []
    for e in est.estimates:
        t = copy.copy(e)
        t.outcomes = [[float(x)] for x in exact_q(est, e).tolist()]
        t.free = False
        truth.estimates.append(t)
    return truth.results()


def summary_inputs(result: EstimateResult) -> dict[str, pd.DataFrame]:
    """(alignment, rollouts, nodes) frames in the run tables' layout, as `summarize` reads them."""
    keys = {}
    ro_rows = []
    by_q: dict[str, list] = {}
    for r in result.rollouts:
        by_q.setdefault(r.question_id, []).append(bool(r.correct))
    for r in result.rollouts:
        rate = sum(by_q[r.question_id]) / len(by_q[r.question_id])
        ro_rows.append(
            {
                "question_id": r.question_id,
                "rollout_idx": r.index,
                "correct": bool(r.correct),
                "pass_rate": rate,
                "difficulty": str(difficulty_band(rate)),
            }
        )
    rollout_of = {r.id: r for r in result.rollouts}
    node_rows = []
    for rec in result.node_records:
        ro = rollout_of[rec["rollout_id"]]
        keys[rec["node_id"]] = (ro.question_id, ro.index, int(rec["position"]))
    scores_by_node: dict[str, dict] = {}
    for s in result.scores:
        scores_by_node.setdefault(s["node_id"], s)
    for rec in result.node_records:
        q, i, t = keys[rec["node_id"]]
        any_score = scores_by_node.get(rec["node_id"], {})
        g_sq = float(any_score.get("g_sq", sum(c["g"] ** 2 for c in rec["candidates"])))
        noise = float(any_score.get("noise", 0.0))
        node_rows.append(
            {
                "question_id": q,
                "rollout_idx": i,
                "position": t,
                "g_sq": g_sq,
                "g_sq_unbiased": g_sq - noise,
                "weight": float(rec["weight"]),
                "negligible": bool(rec["negligible"]),
                "degenerate": bool(rec["degenerate"]),
            }
        )
    al_rows = []
    for s in result.scores:
        q, i, t = keys[s["node_id"]]
        al_rows.append(
            {
                "question_id": q,
                "rollout_idx": i,
                "position": t,
                "config": f"{s['teacher']}|{s['objective']}",
                "teacher": s["teacher"],
                "objective": s["objective"],
                "cos_full": s["cos_full"],
                "cos_support": s["cos_support"],
                "cos_bias_corrected": s["cos_full_corrected"],
                "cos_support_bias_corrected": s["cos_support_corrected"],
                "teacher_advantage": 0.0 if s["ta"] is None else s["ta"],
                "dot": s["dot"],
                "d_sq": s["d_sq_full"],
                "d_sq_support": s["d_sq_support"],
                "weight": 1.0,
                "degenerate": bool(s["degenerate"]),
                "no_signal": bool(s.get("no_signal", False)),
            }
        )
    return {
        "alignment": pd.DataFrame(al_rows),
        "rollouts": pd.DataFrame(ro_rows),
        "nodes": pd.DataFrame(node_rows),
    }


def exact_questions(engine, n: int, seed: int = 0, length: int = 8, prefix: str = "q") -> list[EstimateQuestion]:
    """n random prompts for the exact engine (digit strings of `length`), each with its verifier.

    Long enough that prompts rarely repeat: a repeated (prefix, token) reuses the same numbered
    continuations, so repeated questions are not independent replications."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = engine.prompt("".join(str(rng.randrange(engine.digits)) for _ in range(length)))
        out.append(EstimateQuestion(id=f"{prefix}{seed}-{i}", prompt_ids=ids, verify=engine.verifier(ids)))
    return out


def run_per_question(engine, questions, teachers, objectives, config) -> list[tuple[Estimator, EstimateResult]]:
    """What `diagnose run` does, without files: one Estimator (and budget) per question."""
    out = []
    for q in questions:
        est = Estimator(engine, [q], teachers, objectives, config)
        out.append((est, est.run()))
    return out


def concat_inputs(results) -> dict[str, pd.DataFrame]:
    """summary_inputs of several results (e.g. one per question), stacked."""
    parts = [summary_inputs(r) for r in results]
    return {k: pd.concat([p[k] for p in parts], ignore_index=True) for k in ("alignment", "rollouts", "nodes")}


def population_truth(engine, questions, teachers, objectives, config) -> list[EstimateResult]:
    """Exact results at EVERY position of the questions' rollouts (weight 1 each, no continuations): summed
    over many questions, the population value every token-weighted summary figure estimates."""
    cfg = copy.copy(config)
    cfg.nodes, cfg.n_boot = "every", 10
    out = []
    for q in questions:
        est = Estimator(engine, [q], teachers, objectives, cfg)
        est.sample()
        est.add_nodes([Node(r, t) for r, ro in enumerate(est.rollouts) for t in range(len(ro.token_ids))], False)
        out.append(exact_result(est))
    return out


def noisy_teacher(engine, name: str, scale: float = 1.5):
    """A teacher for null checks: the student's logits plus Gaussian noise of `scale`, drawn from a stream
    keyed by (name, prefix) with a stable hash (teachers with the same scale have the same truth)."""

    def teacher(rollouts, nodes):
        rows = []
        for n in nodes:
            ro = rollouts[n.rollout]
            seq = ro.prompt_ids + ro.token_ids
            cut = len(ro.prompt_ids) + n.position
            z = engine.score([seq], [[cut]])[0].logits[0]
            key = hashlib.blake2b(repr((name, tuple(seq[:cut]))).encode(), digest_size=4).digest()
            g = torch.Generator().manual_seed(int.from_bytes(key, "little") & 0x7FFFFFFF)
            rows.append(z + scale * torch.randn(z.shape, generator=g))
        return torch.stack(rows)

    return teacher


def informed_teacher(engine, strength: float = 4.0):
    """A teacher that knows Q: the student's logits plus strength x (Q - V) (clearly positive alignment)."""

    def teacher(rollouts, nodes):
        rows = []
        for n in nodes:
            ro = rollouts[n.rollout]
            seq = ro.prompt_ids + ro.token_ids
            cut = len(ro.prompt_ids) + n.position
            q, v = engine.exact_values(seq[:cut])
            rows.append(engine.score([seq], [[cut]])[0].logits[0] + strength * (q.float() - v))
        return torch.stack(rows)

    return teacher
