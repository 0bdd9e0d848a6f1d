"""Exact truth for validating the estimator: the same figures with Q-hat replaced by the exact Q.

On an engine that knows Q exactly (the exact engine's `exact_values`), `exact_result(est)` recomputes every
score of a finished Estimator at the same nodes, candidates, directions and weights with Q-hat := Q and no
noise, so an estimate and its truth differ only by what the estimator is responsible for. `summary_inputs`
lays an EstimateResult out as the run tables that `diagnose.estimate.summary.summarize` reads, so summary
figures (pooled alignment, splits, margins) can be compared with their exact values as well.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import random

import pandas as pd
import torch

from ..tables import difficulty_band
from ..teachers.at_nodes import engine_teacher
from .frontier import from_rollouts, plan_budgets, with_plan
from .nodes import Node
from .pipeline import EstimateResult, Estimator
from .q import NodeEstimate
from .rollouts import EstimateQuestion
from .stats import unbiased_g_sq


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


def _with_outcomes(est: Estimator, n_boot: int, outcomes, free=None) -> EstimateResult:
    """The estimator's result with every node's outcomes replaced by `outcomes(e, q)` (q: the node's exact Q on
    its candidates), recomputed at the same nodes, candidates, directions and weights."""
    truth = copy.copy(est)
    truth.cfg = copy.copy(est.cfg)
    truth.cfg.n_boot = n_boot
    truth.estimates = []
    for e in est.estimates:
        t = copy.copy(e)
        t.outcomes = outcomes(e, exact_q(est, e))
        if free is not None:
            t.free = free
        truth.estimates.append(t)
    return truth.results()


def exact_result(est: Estimator, n_boot: int = 10) -> EstimateResult:
    """The estimator's result with every candidate's Q-hat set to the exact Q (one noiseless 'outcome').

    A candidate's outcome list holds the single value Q, so Q-hat = Q and the noise term (which needs two
    outcomes) is 0; node-level intervals are meaningless here and computed with few replicates.
    """
    return _with_outcomes(est, n_boot, lambda e, q: [[float(x)] for x in q.tolist()], free=False)


def resampled_result(est: Estimator, gen: torch.Generator, continuations: int | None = None,
                     n_boot: int = 5) -> EstimateResult:
    """The estimator's result with fresh continuation outcomes drawn from the exact Q at the same nodes.

    Each candidate gets as many Bernoulli(Q) outcomes as it had (or `continuations` each); a free rollout
    verdict stays, since it is fixed once the rollout is. Averaging a figure over many such draws gives its
    expectation over continuation noise given the rollouts and nodes: the estimand of a descriptive figure
    such as the raw per-node cosine mean, which changes with the number of continuations."""

    def redraw(e, q):
        rows = []
        for k, o in enumerate(e.outcomes):
            keep = o[:1] if (e.free and k == 0) else []
            n = (continuations if continuations is not None else len(o)) - len(keep)
            draws = torch.bernoulli(q[k].expand(max(n, 0)), generator=gen)
            rows.append(keep + [int(x) for x in draws.tolist()])
        return rows

    return _with_outcomes(est, n_boot, redraw)


def summary_inputs(result: EstimateResult) -> dict[str, pd.DataFrame]:
    """(alignment, rollouts, nodes) frames in the run tables' layout (estimate/rows.py), as `summarize` reads
    them: the same rows a run writes, without the text and proxy columns."""
    tables = result.tables()
    return {k: tables[k] for k in ("alignment", "rollouts", "nodes")}


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


def run_per_question(
    engine, questions, teachers, objectives, config, frontier: float = 1.0, plan_seed: int | None = None,
    selection_seed: int | None = None,
) -> list[tuple[Estimator, EstimateResult]]:
    """What `diagnose run` does, without files: one Estimator (and budget) per question; with `frontier` < 1,
    first every question's rollouts, then the frontier plan (frontier.plan_budgets, its coins keyed by
    `plan_seed`, default the config's seed) sets each question's budget and inclusion, as the run's does.
    `selection_seed`: the rollouts drawn with the config's seed, node selection (and continuations) with this
    one, so that replications vary the design and keep the population."""
    if frontier >= 1 and selection_seed is None:
        out = []
        for q in questions:
            est = Estimator(engine, [q], teachers, objectives, config)
            out.append((est, est.run()))
        return out
    rollouts = [Estimator(engine, [q], {}, objectives, config).sample() for q in questions]
    verdicts, tokens = from_rollouts(rollouts)
    seed = config.seed if plan_seed is None else plan_seed
    plans = plan_budgets(verdicts, [q.id for q in questions], config.budget, frontier, seed, tokens)
    run_cfg = config if selection_seed is None else dataclasses.replace(config, seed=selection_seed)
    out = []
    for q, ro, plan in zip(questions, rollouts, plans, strict=True):
        est = Estimator(engine, [q], teachers, objectives, with_plan(run_cfg, plan))
        out.append((est, est.run(ro)))
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

    def adjust(prefix, z):
        key = hashlib.blake2b(repr((name, tuple(prefix))).encode(), digest_size=4).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key, "little") & 0x7FFFFFFF)
        return z + scale * torch.randn(z.shape, generator=g)

    return engine_teacher(engine, adjust)


def informed_teacher(engine, strength: float = 4.0):
    """A teacher that knows Q: the student's logits plus strength x (Q - V) (clearly positive alignment)."""

    def adjust(prefix, z):
        q, v = engine.exact_values(prefix)
        return z + strength * (q.float() - v)

    return engine_teacher(engine, adjust)


def exact_node_pool(engine, questions, teachers, config) -> list[dict]:
    """Per question, its nodes as `diagnose run` selects them (one Estimator per question) with the exact Q on
    each node's candidate set: rollouts (verdicts), positions, design weights, student p and exact Q. The
    material for simulations that redraw only the continuations (`headroom_simulation`)."""
    pool = []
    for est, result in run_per_question(engine, questions, teachers, ["rkl"], config):
        nodes = []
        for e, rec in zip(est.estimates, result.node_records, strict=True):
            ro = est.rollouts[e.node.rollout]
            nodes.append(
                {
                    "rollout_idx": ro.index,
                    "position": e.node.position,
                    "weight": float(rec["weight"]),
                    "p": torch.tensor(e.p, dtype=torch.float64),
                    "q": exact_q(est, e),
                }
            )
        rollouts = [(r.index, bool(r.correct)) for r in est.rollouts]
        pool.append({"question_id": est.questions[0].id, "rollouts": rollouts, "nodes": nodes})
    return pool


def headroom_simulation(
    pool: list[dict],
    rng: random.Random,
    configs: int = 15,
    cos: float = 0.3,
    winner_cos: float | None = None,
    continuations: int = 2,
    n_boot: int = 500,
) -> tuple[dict, float]:
    """One simulated run: (the summary's headroom for cos_full, the exact headroom).

    At every node of `pool` (exact Q known) each of `configs` configurations gets a direction on the candidate
    set with a set true cosine to the exact g*: `cos` for all (null: every per-node choice is as good as any,
    exact headroom 0), or, with `winner_cos`, one configuration drawn per node has that cosine (a real
    per-node winner). Each candidate's `continuations` outcomes are drawn from its exact Q; g*-hat, its
    halves and noise come from the project's own functions, and the tables go through `summarize`. The exact
    headroom is the same pooled figure with the exact g*, the per-node best and the single best chosen on it.
    """
    from .stats import noise_term, sparse_ideal, split_halves
    from .summary import summarize

    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    names = [f"c{j:02d}|rkl" for j in range(configs)]
    al, nd, ro = [], [], []
    exact_terms = []  # (w, <g, u_c> for every c, |g|^2)
    for q in pool:
        rate = sum(c for _, c in q["rollouts"]) / len(q["rollouts"])
        for idx, correct in q["rollouts"]:
            ro.append(
                {
                    "question_id": q["question_id"],
                    "rollout_idx": idx,
                    "correct": correct,
                    "pass_rate": rate,
                    "difficulty": str(difficulty_band(rate)),
                }
            )
        for n in q["nodes"]:
            p, qx = n["p"], n["q"]
            k = len(p)
            mask = torch.ones(1, k, dtype=torch.bool)
            g, _ = sparse_ideal(p[None], qx[None], mask)
            g = g[0]
            gn = float(g.norm())
            gu = g / gn if gn > 0 else torch.zeros(k, dtype=torch.float64)
            win = rng.randrange(configs) if winner_cos is not None else -1
            dirs = []
            for j in range(configs):
                e = torch.randn(k, generator=gen, dtype=torch.float64)
                e = e - (e @ gu) * gu
                e = e / e.norm().clamp_min(1e-300)
                c = winner_cos if j == win else cos
                dirs.append(c * gu + (1 - c * c) ** 0.5 * e)
            outcomes = [
                (torch.rand(continuations, generator=gen, dtype=torch.float64) < float(qk)).int().tolist() for qk in qx
            ]
            s = torch.tensor([[sum(o) for o in outcomes]], dtype=torch.float64)
            cnt = torch.full((1, k), float(continuations), dtype=torch.float64)
            gh, _ = sparse_ideal(p[None], s / cnt, mask)
            (s0, n0), (s1, n1) = split_halves([outcomes], k)
            g0, _ = sparse_ideal(p[None], s0 / n0.clamp_min(1), mask)
            g1, _ = sparse_ideal(p[None], s1 / n1.clamp_min(1), mask)
            ok = bool((n0 > 0).all() and (n1 > 0).all())
            g_sq = float((gh * gh).sum())
            noise = float(noise_term(p[None], s, cnt, mask)[0])
            nd.append(
                {
                    "question_id": q["question_id"],
                    "rollout_idx": n["rollout_idx"],
                    "position": n["position"],
                    "g_sq": g_sq,
                    "g_sq_unbiased": float(unbiased_g_sq(g_sq, noise)),
                    "weight": n["weight"],
                    "negligible": False,
                    "degenerate": g_sq == 0,
                }
            )
            for name, d in zip(names, dirs, strict=True):
                dot = float(gh[0] @ d)
                raw = dot / (g_sq**0.5) if g_sq > 0 else 0.0
                al.append(
                    {
                        "question_id": q["question_id"],
                        "rollout_idx": n["rollout_idx"],
                        "position": n["position"],
                        "config": name,
                        "teacher": name.split("|")[0],
                        "objective": "rkl",
                        "cos_full": raw,
                        "cos_support": raw,
                        "cos_bias_corrected": float("nan"),
                        "cos_support_bias_corrected": float("nan"),
                        "teacher_advantage": 0.0,
                        "dot": dot,
                        "dot_half0": float(g0[0] @ d) if ok else float("nan"),
                        "dot_half1": float(g1[0] @ d) if ok else float("nan"),
                        "d_sq": 1.0,
                        "d_sq_support": 1.0,
                        "weight": 1.0,
                        "degenerate": g_sq == 0,
                        "no_signal": False,
                    }
                )
            exact_terms.append((n["weight"], [float(g @ d) for d in dirs], gn * gn))
    summ = summarize(pd.DataFrame(al), pd.DataFrame(ro), pd.DataFrame(nd), metrics=("cos_full",), n_boot=n_boot,
                     seed=rng.randrange(2**31))
    hr = summ.headroom.get("cos_full", {})
    if not hr:
        return hr, float("nan")
    w = torch.tensor([t[0] for t in exact_terms], dtype=torch.float64)
    dots = torch.tensor([t[1] for t in exact_terms], dtype=torch.float64)
    gsq = torch.tensor([t[2] for t in exact_terms], dtype=torch.float64)
    scale = float((w * gsq).sum() * w.sum()) ** 0.5
    j_best = int((w[:, None] * dots).sum(0).argmax())  # the exactly best single configuration
    exact = float((w * (dots.max(1).values - dots[:, j_best])).sum()) / scale
    return hr, exact
