"""Benchmark: continuations needed to reach a target alignment-interval half-width, adaptive vs uniform.

Both arms estimate the same nodes from the same rollouts and start from `adaptive_initial` continuations per
candidate. Adaptive: those are the pilot (planning only, never averaged into Q-hat, but spent), and one plan
from the pilot draws fresh estimation continuations until every node's predicted interval meets the target
(adaptive.allocate). Uniform: the baseline needs no pilot; the first continuations are estimation outcomes
and rounds of `adaptive_step` more per candidate run until each node's interval meets the target, its g*
is confidently ~0, or a candidate cap is hit (sequential: cheapest, though its Q-hat is not unbiased).
Both arms are judged by the same realized interval (delta method, adaptive.half_widths, on the estimation
outcomes): savings = uniform continuations / adaptive continuations (pilot included) over the nodes that met
the target in both arms, reported with each arm's median realized half-width there and, on the exact model,
each arm's coverage of the exact support cosine by its bootstrap interval. The two arms share one sample
cache, so common continuations are generated once (each arm is still charged for all it uses).

Parts: the exact model (always) and the embedded SmolLM2 through the hf engine on arithmetic questions with
an answer-hint self-distillation teacher (skipped with a reason when the hf engine or checkpoint is absent).
`adaptive_split_bias` measures the bias of Q-hat(observed) per rollout verdict under adaptive allocation.
Run: .venv/bin/python benchmarks/estimator.py  (last line: JSON).
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Callable

import torch

from diagnose import engines
from diagnose.engines.base import render_prompt
from diagnose.estimate import (
    EstimateConfig,
    EstimateQuestion,
    Estimator,
    MemoryCache,
    pack,
)
from diagnose.estimate.adaptive import finished, half_widths
from diagnose.teachers import engine_teacher


def compare_allocations(
    make_estimator: Callable[[], Estimator],
    target_half_width: float,
    truth: Callable | None = None,
) -> dict:
    """Continuations to reach `target_half_width` on every node with adaptive versus uniform allocation.

    `make_estimator()` must return a fresh Estimator (same engine, questions, config, allocation="adaptive")
    each time; both arms select the same nodes with `adaptive_initial` continuations per candidate, then run
    `adapt` (see the module docstring). A node met the target when its realized interval (adaptive.half_widths
    on its estimation outcomes) is within the target and it is not finished (g* confidently ~0). `savings`
    compares the nodes that met it in both arms, every continuation counted (the adaptive pilot too);
    `total_ratio` compares whole runs. `truth(est, e)` (exact Q on a node's candidates), when given, adds each
    arm's coverage: the share of the informative nodes met in both arms (|g*| > 0.02 by the exact Q, not
    degenerate) whose bootstrap interval of the support cosine holds the exact one.
    """
    arms = {}
    for mode in ("adaptive", "uniform"):
        est = make_estimator()
        est.cfg.target_half_width = target_half_width
        est.sample()
        est.select()
        est.adapt(mode)
        _, p, s, c, mask = pack(est.estimates)
        _, _, _, pilot, _ = pack(est.estimates, pilot=True)
        hw = half_widths(p, s, c, mask, [d for _, d, _, _ in est.direction_tensors()])
        arms[mode] = {
            "per_node": (c + pilot).sum(-1) - (1 if est.cfg.free_sample else 0),
            "hw": hw,
            "met": (hw <= target_half_width + 1e-9) & ~finished(p, s, c, mask, est.cfg.g_tolerance),
            "total": est.spend.continuations,
            "estimator": est,
        }
    a, u = arms["adaptive"], arms["uniform"]
    both = a["met"] & u["met"]
    ca, cu = float(a["per_node"][both].sum()), float(u["per_node"][both].sum())
    out = {
        "target_half_width": target_half_width,
        "nodes": int(both.numel()),
        "nodes_met_both": int(both.sum()),
        "nodes_met_adaptive": int(a["met"].sum()),
        "nodes_met_uniform": int(u["met"].sum()),
        "adaptive_continuations": ca,
        "uniform_continuations": cu,
        "savings": cu / ca if ca > 0 else float("nan"),
        "adaptive_total": a["total"],
        "uniform_total": u["total"],
        "total_ratio": u["total"] / max(1, a["total"]),
        "median_half_width_adaptive": float(a["hw"][both].median()) if bool(both.any()) else float("nan"),
        "median_half_width_uniform": float(u["hw"][both].median()) if bool(both.any()) else float("nan"),
        "estimators": {"adaptive": a["estimator"], "uniform": u["estimator"]},
    }
    if truth is not None:
        for mode, arm in arms.items():
            out[f"coverage_{mode}"], out["coverage_nodes"] = _coverage(arm["estimator"], both, truth)
        out.update(_scaled_savings(arms, target_half_width, truth))
    return out


def _exact_half_widths(est: Estimator, truth: Callable):
    """(exact delta-method half-width at the estimation counts [N], exact |g*| [N]): the interval each node's
    allocation buys in truth (exact Q in J and sigma^2), whatever its outcomes happened to be."""
    from diagnose.estimate import sparse_ideal
    from diagnose.estimate.adaptive import predicted_variance, sensitivities

    ids, p, _, c, _ = pack(est.estimates)
    mask = ids >= 0
    q = torch.zeros_like(p)
    for i, e in enumerate(est.estimates):
        q[i, : len(e.cand_ids)] = truth(est, e).double()
    big = torch.full_like(p, 1e9)
    var = []
    for _, d, _, _ in est.direction_tensors():
        jac, _ = sensitivities(p, q * big, big, mask, d)
        var.append(predicted_variance(jac, torch.where(mask, q * (1 - q), 0.0), c.clamp_min(1e-9), mask))
    g, _ = sparse_ideal(p, q, mask)
    return 1.96 * torch.stack(var).amax(0).sqrt(), (g * g).sum(-1).sqrt()


def _scaled_savings(arms: dict, target: float, truth: Callable) -> dict:
    """Savings at exactly the target width in truth: each arm's estimation continuations at a node scaled by
    (exact half-width / target)^2 (variance ~ 1/n), so neither a lucky early stop nor an overshoot counts, plus
    the adaptive pilot unscaled; over nodes with |g*| > 0.02 (exact) that neither arm finished."""
    costs, hws = {}, {}
    for mode, arm in arms.items():
        est = arm["estimator"]
        hw, g = _exact_half_widths(est, truth)
        _, _, _, c, _ = pack(est.estimates)
        _, _, _, pilot, _ = pack(est.estimates, pilot=True)
        costs[mode] = pilot.sum(-1) + c.sum(-1) * (hw / target) ** 2
        hws[mode] = hw
        informative = g > 0.02
    ok = informative & torch.isfinite(costs["adaptive"]) & torch.isfinite(costs["uniform"])
    ok &= (arms["adaptive"]["per_node"] > 0) & ~torch.stack([arms[m]["hw"] == 0 for m in arms]).any(0)
    sa, su = float(costs["adaptive"][ok].sum()), float(costs["uniform"][ok].sum())
    return {
        "scaled_nodes": int(ok.sum()),
        "scaled_savings": su / sa if sa > 0 else float("nan"),
        "exact_half_width_adaptive": float(hws["adaptive"][ok].median()) if bool(ok.any()) else float("nan"),
        "exact_half_width_uniform": float(hws["uniform"][ok].median()) if bool(ok.any()) else float("nan"),
    }


def _coverage(est: Estimator, nodes, truth: Callable) -> tuple[float, int]:
    """Share of the informative `nodes` (mask; |g*| > 0.02 by the exact Q, not degenerate) whose bootstrap
    interval of the support cosine (first direction) holds the exact one, and how many there were."""
    from diagnose.estimate import sparse_ideal

    res = est.results()
    rows = {}
    for r in res.scores:
        rows.setdefault(r["node_id"], r)
    key = next(iter(est.directions))
    hits = total = 0
    for i, e in enumerate(est.estimates):
        r = rows.get(e.id)
        if not bool(nodes[i]) or r is None or r["degenerate"]:
            continue
        q = truth(est, e).double()
        live = torch.ones(1, len(q), dtype=torch.bool)
        g, _ = sparse_ideal(torch.tensor(e.p, dtype=torch.float64)[None], q[None], live)
        if float(g.norm()) < 0.02:
            continue
        d = est.directions[key].d[i].double()
        true = float((d * g[0]).sum() / (g[0].norm() * d.norm()))
        total += 1
        hits += r["cos_support_lo"] - 1e-9 <= true <= r["cos_support_hi"] + 1e-9
    return (hits / total if total else float("nan")), total


def compare_at_budget(make_estimator: Callable[[], Estimator], continuations: int, truth: Callable) -> dict:
    """Adaptive versus uniform allocation at the same budget, the way a run spends it (no target).

    Uniform: `continuations` per candidate at every node, the default design (no pilot, nothing adaptive).
    Adaptive: the same nodes (make_estimator's config must select nodes independently of the budget, e.g.
    nodes="every") with the uniform arm's spend as budget: pilot plus plan. Both unbiased. Each node's
    precision is its exact delta-method variance of the cosine (exact Q from `truth(est, e)`) at its
    estimation counts, over the nodes with |g*| > 0.02 (exact). Uniform variance scales as 1 / budget, so
    `savings` = uniform budget that would match the adaptive mean variance / adaptive budget (pilot spent);
    also at the worst node, the 90th percentile and the median. `coverage_*`: share of those nodes whose
    bootstrap interval of the support cosine holds the exact one; `realized_half_width_*`: the mean predicted
    half-width from each arm's own estimation outcomes (what a run reports).
    """
    arms = {}
    for mode in ("uniform", "adaptive"):
        est = make_estimator()
        est.cfg.target_half_width = None
        if mode == "uniform":
            est.cfg.allocation, est.cfg.continuations = "uniform", continuations
        else:
            est.cfg.allocation, est.cfg.budget = "adaptive", float(arms["uniform"]["spent"])
        est.sample()
        est.select()
        if mode == "adaptive":
            est.adapt()
        hw, g = _exact_half_widths(est, truth)
        _, p, s, c, mask = pack(est.estimates)
        realized = half_widths(p, s, c, mask, [d for _, d, _, _ in est.direction_tensors()])
        arms[mode] = {"spent": est.spend.continuations, "var": hw**2, "g": g, "realized": realized, "est": est}
    u, a = arms["uniform"], arms["adaptive"]
    ok = (u["g"] > 0.02) & torch.isfinite(a["var"]) & torch.isfinite(u["var"])
    scale = u["spent"] / max(1, a["spent"])
    out = {"continuations_per_candidate": continuations, "budget": u["spent"], "adaptive_spent": a["spent"]}
    out["nodes"] = int(ok.sum())
    for name, stat in (
        ("savings", lambda v: v.mean()),
        ("savings_worst", lambda v: v.max()),
        ("savings_p90", lambda v: v.quantile(0.9)),
        ("savings_median", lambda v: v.median()),
    ):
        out[name] = float(stat(u["var"][ok]) / stat(a["var"][ok])) * scale
    both = torch.ones_like(ok)
    for mode, arm in arms.items():
        cov, _ = _coverage(arm["est"], both, truth)
        out[f"coverage_{mode}"] = cov
        out[f"realized_half_width_{mode}"] = float(arm["realized"][ok].mean())
    return out


def _summary(out: dict, seconds: float) -> dict:
    keep = (
        "savings",
        "total_ratio",
        "target_half_width",
        "nodes",
        "nodes_met_both",
        "nodes_met_adaptive",
        "nodes_met_uniform",
        "adaptive_continuations",
        "uniform_continuations",
        "adaptive_total",
        "uniform_total",
        "median_half_width_adaptive",
        "median_half_width_uniform",
        "coverage_adaptive",
        "coverage_uniform",
        "coverage_nodes",
        "scaled_nodes",
        "scaled_savings",
        "exact_half_width_adaptive",
        "exact_half_width_uniform",
    )
    return {**{k: out[k] for k in keep if k in out}, "seconds": round(seconds, 1)}


def exact_part(target: float = 0.1, budget_continuations: tuple[int, ...] = (16, 64)) -> dict:
    """The exact model: target mode (`compare_allocations`, with exact-width scaling and coverage) and budget
    mode (`compare_at_budget`) at each of `budget_continuations` per candidate."""
    eng, teacher = engines.load("exact", "exact", seed=1), engines.load("exact", "exact", seed=2)
    qs = [
        EstimateQuestion(id=f"q{i}", prompt_ids=eng.prompt(t), verify=eng.verifier(eng.prompt(t)))
        for i, t in enumerate(("21", "3", "12", "0"))
    ]
    cache = MemoryCache()

    def make():
        cfg = EstimateConfig(
            rollouts_per_question=2,
            budget=1e7,
            nodes="every",
            allocation="adaptive",
            adaptive_initial=2,
            round_size=4096,
            max_per_candidate=1024,
            seed=3,
            max_new_tokens=256, k_student=4, k_teacher=4, continuations=8,
        )
        return Estimator(eng, qs, {"teacher": engine_teacher(teacher)}, ["rkl"], cfg, cache=cache)

    from diagnose.estimate.truth import exact_q

    t0 = time.time()
    out = compare_allocations(make, target, truth=exact_q)
    oracle = _oracle_savings(eng, out["estimators"]["uniform"])
    result = {**_summary(out, time.time() - t0), "oracle_savings": oracle}
    for n in budget_continuations:
        t0 = time.time()
        result[f"budget_{n}"] = {**compare_at_budget(make, n, exact_q), "seconds": round(time.time() - t0, 1)}
    return result


def _oracle_savings(eng, est) -> float:
    """The best any within-node allocation could do here: uniform / optimal (n_k ~ sqrt(J_k^2 Q_k (1 - Q_k)))
    continuations for equal delta-method variance, computed from the exact Q (no estimation noise)."""
    from diagnose.estimate import pack, sparse_ideal
    from diagnose.estimate.adaptive import sensitivities

    ids, p, _, _, _ = pack(est.estimates)
    ((_, d, _, _),) = est.direction_tensors()
    q = torch.zeros_like(p)
    for i, e in enumerate(est.estimates):
        ro = est.rollouts[e.node.rollout]
        q_all, _ = eng.exact_values(ro.prompt_ids + ro.token_ids[: e.node.position])
        q[i, : len(e.cand_ids)] = q_all[torch.tensor(e.cand_ids)]
    mask = ids >= 0
    big = torch.full_like(p, 1e6)
    jac, _ = sensitivities(p, q * big, big, mask, d)
    a = torch.where(mask, jac**2 * q * (1 - q), 0.0)
    g, _ = sparse_ideal(p, q, mask)
    ok = (g * g).sum(-1).sqrt() > 0.01
    uniform = mask.sum(-1) * a.sum(-1)
    optimal = a.sqrt().sum(-1) ** 2
    return float(uniform[ok].sum() / optimal[ok].sum())


def _last_number(text: str):
    nums = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return nums[-1] if nums else None


def _arithmetic(tokenizer, n: int):
    """(EstimateQuestion, hint prompt ids) pairs: the task layer's arithmetic task if present, else a local one."""
    try:
        from diagnose import tasks

        task = tasks.get("arithmetic")
        out = []
        for q in task.questions(n, seed=0):
            out.append(
                (
                    EstimateQuestion(
                        id=q.id,
                        prompt_ids=render_prompt(tokenizer, q.prompt),
                        verify=lambda text, q=q: task.verify(q, text),
                    ),
                    render_prompt(
                        tokenizer, f"{q.prompt}\n(For reference, the correct answer is {q.answer}.)"
                    ),
                    tuple(task.stop),
                )
            )
        return out, "diagnose.tasks arithmetic"
    except ImportError:
        out = []
        gen = torch.Generator().manual_seed(0)
        for i in range(n):
            a, b = (int(x) for x in torch.randint(1, 10, (2,), generator=gen))
            prompt = f"What is {a} + {b}? Give the final answer as a number."
            out.append(
                (
                    EstimateQuestion(
                        id=f"add{i}",
                        prompt_ids=render_prompt(tokenizer, prompt),
                        verify=lambda text, ans=a + b: _last_number(text) == str(ans),
                    ),
                    render_prompt(tokenizer, f"{prompt}\n(For reference, the correct answer is {a + b}.)"),
                    (),
                )
            )
        return out, "local last-number verifier"


def _hint_teacher(engine, hint_prompts: dict[str, list[int]]):
    """Self-distillation teacher: the student shown the answer, scored on the student's response."""

    def teacher(rollouts, nodes):
        seqs, pos = [], []
        for n in nodes:
            ro = rollouts[n.rollout]
            hint = hint_prompts[ro.question_id]
            seqs.append(hint + ro.token_ids)
            pos.append([len(hint) + n.position])
        return torch.cat([sc.logits.float() for sc in engine.score(seqs, pos, topk=None)])

    return teacher


def embedded_part(
    target: float = 0.3, questions: int = 3, node_budget: float = 240.0
) -> tuple[dict | None, str]:
    try:
        eng = engines.load("hf", "embedded")
    except (
        Exception
    ) as exc:  # the hf engine lives on another branch until merged; the checkpoint may be absent
        return None, f"hf engine unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    items, source = _arithmetic(eng.tokenizer, questions)
    qs = [q for q, _, _ in items]
    hints = {q.id: h for q, h, _ in items}
    stop = items[0][2] if items else ()
    cache = MemoryCache()

    def make():
        cfg = EstimateConfig(
            rollouts_per_question=2,
            max_new_tokens=48,
            stop=stop,
            budget=node_budget * 2,
            nodes="windows",
            allocation="adaptive",
            adaptive_initial=2,
            adaptive_reserve=0.5,
            round_size=512,
            max_per_candidate=48,
            k_student=4,
            k_teacher=4,
            seed=0,
            continuations=8,
        )
        est = Estimator(eng, qs, {"hint": _hint_teacher(eng, hints)}, ["rkl"], cfg, cache=cache)
        est.cfg.budget = 1e7  # node selection spends node_budget; the rounds run to the target or the cap
        est.cfg.adaptive_reserve = 1 - node_budget / est.cfg.budget
        return est

    t0 = time.time()
    out = compare_allocations(make, target)
    return {**_summary(out, time.time() - t0), "questions": source}, ""


def adaptive_split_bias(n_questions: int, detail: bool = False, seed: int = 11):
    """Bias of Q-hat(observed token) under allocation="adaptive", per split of the rollout's verdict, in
    standard errors: {"correct": z, "incorrect": z}. The exact engine (horizon 12, Q by dynamic programming)
    at `diagnose run`'s defaults otherwise (RunConfig().estimate_config()), one teacher (another exact model),
    `n_questions` questions of benchmarks/validity.py's split_bias (seed 11), one Estimator per question.

    detail=True: (that dict, {split: {"bias", "se", "nodes", "unestimated"}}), where "unestimated" counts
    nodes whose observed token got no estimation continuation (left out; 0 when the budget covers every
    floor, as at the defaults)."""
    import math

    import numpy as np

    from diagnose.estimate.truth import exact_q, exact_questions, run_per_question
    from diagnose.pipeline.config import RunConfig

    eng = engines.load("exact", "exact", seed=1, horizon=12)
    teacher = engines.load("exact", "exact", seed=2, horizon=12)
    cfg = RunConfig().estimate_config()
    cfg.allocation, cfg.n_boot = "adaptive", 20  # node-level intervals are not used here
    qs = exact_questions(eng, n_questions, seed=seed)
    runs = run_per_question(eng, qs, {"t": engine_teacher(teacher)}, ["rkl"], cfg)
    errs: dict[bool, list[float]] = {True: [], False: []}
    missing = {True: 0, False: 0}
    for est, _ in runs:
        for e in est.estimates:
            k = e.cand_ids.index(e.observed)
            split = bool(est.rollouts[e.node.rollout].correct)
            if not e.outcomes[k]:
                missing[split] += 1
                continue
            errs[split].append(e.q_hat[k] - float(exact_q(est, e)[k]))
    z, info = {}, {}
    for split, name in ((True, "correct"), (False, "incorrect")):
        x = np.array(errs[split])
        se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
        bias = float(x.mean()) if len(x) else float("nan")
        z[name] = bias / se if se > 0 else float("nan")
        info[name] = {"bias": bias, "se": se, "nodes": len(x), "unestimated": missing[split]}
    return (z, info) if detail else z


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exact-target", type=float, default=0.1)
    ap.add_argument("--embedded-target", type=float, default=0.3)
    ap.add_argument("--embedded-questions", type=int, default=3)
    ap.add_argument("--skip-embedded", action="store_true", help="print null for the embedded part")
    args = ap.parse_args()
    exact = exact_part(args.exact_target)
    print(f"exact: {exact}", file=sys.stderr)
    if args.skip_embedded:
        embedded, reason = None, "skipped (--skip-embedded)"
    else:
        embedded, reason = embedded_part(args.embedded_target, args.embedded_questions)
    print(f"embedded: {embedded if embedded is not None else reason}", file=sys.stderr)
    result = {"exact": exact, "embedded": embedded}
    if embedded is None:
        result["embedded_reason"] = reason
    print(json.dumps(result))


if __name__ == "__main__":
    main()
