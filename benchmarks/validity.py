"""Benchmark: are the reported numbers honest? Everything on the exact engine (Q known by dynamic programming)
at the settings `diagnose run` uses by default (RunConfig: 4 rollouts, 2 continuations per candidate, top-k
2, budget 40 per question, windows, 64 tokens), with a teacher that is another exact model.

- split_bias: mean Q-hat(observed token) - Q per split of the rollouts' verdict (correct / incorrect),
  with its standard error: the estimator must not manufacture the correct-vs-incorrect difference.
- false_clear_rate: share of seeded null runs (two teachers with the same truth: the student's logits plus
  independent noise of one size) whose summary declares a clear winner. Goal <= 0.05.
- coverage: share of seeded runs whose 95% interval for a configuration's alignment (summary `mean`)
  covers the exact population value (exact Q at every token of 1,500 questions' rollouts), the worst over
  four configurations: another exact model (alignment ~0) and a teacher that knows Q (clearly positive),
  each with rkl and fkl. Goal: in [0.92, 0.97] (nominal 0.95: neither too short nor too long). The same runs
  are also summarized with the old two-stage bootstrap (questions, then rollouts within each drawn question)
  for comparison: `coverage_two_stage` and the median widths of both.
- headroom_null_coverage: share of >= 100 null runs (15 configurations with true cosine 0.3 at every node of
  the exact engine's nodes at the defaults: exact headroom 0) whose headroom interval covers 0. Goal >= 0.90.
- headroom_coverage: the same with a real per-node winner (one configuration per node at cosine 0.9): share
  whose interval covers the exact headroom. Goal >= 0.90.
- adaptive_split_bias: bias of Q-hat(observed token) under allocation="adaptive", per split of the rollouts'
  verdict, in standard errors (benchmarks/estimator.py `adaptive_split_bias`). Goal |z| <= 3.
- inclusion_error: largest relative error between the stored inclusion probabilities of token-budget node
  selection and the empirical inclusion frequencies over seeds (benchmarks/inclusion.py). Goal <= 0.10.
- max_precision_error: largest |cos - cos_exact| over every objective on peaked rows (1 - p_top down to
  1e-12), the estimator's path (fused kernel d at the candidates, float64 sums) against a 60-digit mpmath
  oracle of the closed forms. Goal <= 1e-3.

Run: .venv/bin/python benchmarks/validity.py [--quick]   (last line: JSON)
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

from diagnose import engines, kernels, objectives
from diagnose.estimate import summary as summary_mod
from diagnose.estimate.stats import node_scores
from diagnose.estimate.summary import summarize
from diagnose.estimate.truth import (
    concat_inputs,
    exact_node_pool,
    exact_q,
    exact_questions,
    headroom_simulation,
    informed_teacher,
    noisy_teacher,
    population_truth,
    run_per_question,
)
from diagnose.pipeline.config import RunConfig
from diagnose.teachers import engine_teacher

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

QUICK = "--quick" in sys.argv
RUNS = 30 if QUICK else 100
QUESTIONS = 16  # per run
HORIZON = 12
DEBUG = "--debug" in sys.argv


def _engines():
    return engines.load("exact", "exact", seed=1, horizon=HORIZON), engines.load(
        "exact", "exact", seed=2, horizon=HORIZON
    )


FRONTIER = RunConfig().frontier  # the frontier plan as `diagnose run` makes it by default


def _config():
    cfg = RunConfig().estimate_config()
    cfg.n_boot = 20  # node-level intervals are not used here
    return cfg


def split_bias(n_questions: int) -> dict:
    eng, teacher = _engines()
    runs = run_per_question(
        eng, exact_questions(eng, n_questions, seed=11), {"t": engine_teacher(teacher)}, ["rkl"], _config()
    )
    errs = {True: [], False: []}
    for est, _ in runs:
        for e in est.estimates:
            k = e.cand_ids.index(e.observed)
            errs[bool(est.rollouts[e.node.rollout].correct)].append(e.q_hat[k] - float(exact_q(est, e)[k]))
    out = {}
    for flag, name in ((True, "correct"), (False, "incorrect")):
        x = np.array(errs[flag])
        out[name] = {"bias": float(x.mean()), "se": float(x.std(ddof=1) / math.sqrt(len(x))), "nodes": len(x)}
    return out


def false_clear_rate(runs: int) -> dict:
    eng, _ = _engines()
    teachers = {"a": noisy_teacher(eng, "a"), "b": noisy_teacher(eng, "b")}
    clear = 0
    for seed in range(runs):
        qs = exact_questions(eng, QUESTIONS, seed=1000 + seed)
        res = run_per_question(eng, qs, teachers, ["fkl"], _config(), frontier=FRONTIER)
        summ = summarize(**concat_inputs([r for _, r in res]), n_boot=500, seed=seed, metrics=("cos_full",))
        clear += bool(summ.recommendation["cos_full"]["overall"].get("clear"))
    return {"rate": clear / runs, "runs": runs, "questions_per_run": QUESTIONS}


class TwoStageResampler(summary_mod.Resampler):
    """The old design, for comparison only: questions with replacement, then rollouts with replacement within
    each drawn copy of a question (counts the within-question variance twice)."""

    def __init__(self, rollouts, n_boot, seed):
        super().__init__(rollouts, 0, seed)
        self.n_boot = int(n_boot)
        qs, codes = np.unique(self.questions, return_inverse=True)
        rng = np.random.default_rng(seed)
        w = np.zeros((self.n_boot, len(codes)))
        k = rng.multinomial(len(qs), np.full(len(qs), 1 / len(qs)), size=self.n_boot)
        for qi in range(len(qs)):
            cols = np.flatnonzero(codes == qi)
            w[:, cols] = rng.multinomial(k[:, qi] * len(cols), np.full(len(cols), 1 / len(cols)))
        self.weights = w


def _summarize_two_stage(**kw):
    keep = summary_mod.Resampler
    summary_mod.Resampler = TwoStageResampler
    try:
        return summarize(**kw)
    finally:
        summary_mod.Resampler = keep


def coverage(runs: int) -> dict:
    eng, teacher = _engines()
    teachers = {"t": engine_teacher(teacher), "informed": informed_teacher(eng)}
    objs = ["rkl", "fkl"]
    pop = population_truth(eng, exact_questions(eng, 1500, seed=7), teachers, objs, _config())
    truth = summarize(**concat_inputs(pop), n_boot=0).table.set_index(["config", "metric"])["mean"]
    designs = {"question": summarize, "two_stage": _summarize_two_stage}
    hits = {d: {k: 0 for k in truth.index} for d in designs}
    widths = {d: {k: [] for k in truth.index} for d in designs}
    for seed in range(runs):
        qs = exact_questions(eng, QUESTIONS, seed=5000 + seed)
        res = run_per_question(eng, qs, teachers, objs, _config(), frontier=FRONTIER)
        inputs = concat_inputs([r for _, r in res])
        for d, fn in designs.items():
            tab = fn(**inputs, n_boot=500, seed=seed).table
            for _, row in tab.iterrows():
                key = (row["config"], row["metric"])
                hits[d][key] += bool(row["ci_low"] <= truth[key] <= row["ci_high"])
                widths[d][key].append(row["ci_high"] - row["ci_low"])
    per = {d: {f"{c}/{m}": hits[d][(c, m)] / runs for c, m in truth.index} for d in designs}
    med = {d: {f"{c}/{m}": float(np.median(w)) for (c, m), w in widths[d].items()} for d in designs}
    return {
        "coverage": min(per["question"].values()),
        "coverage_max": max(per["question"].values()),
        "coverage_two_stage": min(per["two_stage"].values()),
        "per_config": per["question"],
        "per_config_two_stage": per["two_stage"],
        "truth": {f"{c}/{m}": float(v) for (c, m), v in truth.items()},
        "median_width": med["question"],
        "median_width_two_stage": med["two_stage"],
        "width_ratio": float(np.median([med["question"][k] / med["two_stage"][k] for k in med["question"]])),
        "runs": runs,
        "questions_per_run": QUESTIONS,
    }


def headroom(runs: int, winner_cos: float | None) -> dict:
    """Coverage of the headroom interval: of 0 with no per-node winner, of the exact headroom with one."""
    eng, teacher = _engines()
    pool = exact_node_pool(eng, exact_questions(eng, 200, seed=71), {"t": engine_teacher(teacher)}, _config())
    hits, est, exact, width, missing = 0, [], [], [], 0
    for r in range(runs):
        rng = random.Random(90_000 + r)
        hr, truth = headroom_simulation(rng.sample(pool, QUESTIONS), rng, configs=15, winner_cos=winner_cos)
        lo, hi = hr.get("headroom_ci_low"), hr.get("headroom_ci_high")
        if lo is None or hi is None:  # nothing resolved (no recommendation): no headroom is claimed
            missing += 1
            continue
        hits += lo <= truth <= hi
        est.append(hr["headroom"])
        exact.append(truth)
        width.append(hi - lo)
    reported = runs - missing
    return {
        "coverage": hits / reported if reported else float("nan"),
        "runs_without_interval": missing,
        "mean_headroom": float(np.mean(est)),
        "mean_exact": float(np.mean(exact)),
        "median_width": float(np.median(width)),
        "runs": runs,
        "configs": 15,
        "winner_cos": winner_cos,
    }


def _mp_direction(obj, z, zt, a, adv, mp):
    """d = -dL/dz of one row in 60-digit arithmetic, from the closed forms of docs/math.md."""
    n = len(z)

    def softmax(x, keep=None):
        e = [mp.e ** mp.mpf(float(v)) if keep is None or i in keep else mp.mpf(0) for i, v in enumerate(x)]
        s_ = mp.fsum(e)
        return [v / s_ for v in e]

    def topk(x, k):
        return set(sorted(range(n), key=lambda i: -float(x[i]))[:k])

    p, q = softmax(z), softmax(zt)
    lp = [mp.log(x) for x in p]
    lq = [mp.log(x) for x in q]
    name, prm = obj.name, obj.params
    e = [mp.mpf(1) if i == a else mp.mpf(0) for i in range(n)]
    kl = mp.fsum(p[i] * (lp[i] - lq[i]) for i in range(n))
    if name == "rkl" or (name == "jsd" and float(prm["beta"]) == 1.0):
        return [-p[i] * (lp[i] - lq[i] - kl) for i in range(n)]
    if name == "fkl" or (name == "jsd" and float(prm["beta"]) == 0.0):
        return [q[i] - p[i] for i in range(n)]
    if name == "jsd":
        b = mp.mpf(float(prm["beta"]))
        r = [lp[i] - mp.log(b * q[i] + (1 - b) * p[i]) for i in range(n)]
        klm = mp.fsum(p[i] * r[i] for i in range(n))
        return [-(1 - b) * p[i] * (r[i] - klm) for i in range(n)]
    if name == "fkl_clipped":
        c = mp.mpf(float(prm["clip"]))
        qu = [q[i] if q[i] * (lq[i] - lp[i]) < c else mp.mpf(0) for i in range(n)]
        su = mp.fsum(qu)
        return [qu[i] - p[i] * su for i in range(n)]
    if name == "rkl_sampled":
        return [-(lp[a] - lq[a]) * (e[i] - p[i]) for i in range(n)]
    if name == "rkl_baselined":
        return [-(lp[a] - lq[a] - kl) * (e[i] - p[i]) for i in range(n)]
    if name == "k3_loss":
        return [(q[a] / p[a] - 1) * (e[i] - p[i]) for i in range(n)]
    if name == "k1_loss":
        return [-(e[i] - p[i]) for i in range(n)]
    if name == "grpo_ref":
        return [mp.mpf(adv) * (e[i] - p[i]) for i in range(n)]
    k = int(prm["k"])
    support = "teacher" if name == "fkl_topk" else prm["support"]
    s_set = {"student": topk(z, k), "teacher": topk(zt, k), "union": topk(z, k) | topk(zt, k)}[support]
    if name == "fkl_topk":
        qs = softmax(zt, s_set)
        return [qs[i] - p[i] for i in range(n)]
    if name == "rkl_topk":
        ps, qs = softmax(z, s_set), softmax(zt, s_set)
        kls = mp.fsum(ps[i] * (mp.log(ps[i]) - mp.log(qs[i])) for i in s_set)
        return [-ps[i] * (mp.log(ps[i]) - mp.log(qs[i]) - kls) if i in s_set else mp.mpf(0) for i in range(n)]
    if name == "rkl_topk_unnorm":
        inner = mp.fsum(p[i] * (lp[i] - lq[i] + 1) for i in s_set)
        return [-(p[i] * (lp[i] - lq[i] + 1) if i in s_set else 0) + p[i] * inner for i in range(n)]
    raise ValueError(f"no 60-digit oracle for {obj.label}")


PRECISION_OBJECTIVES = [
    "rkl",
    "fkl",
    "jsd:beta=0.5",
    "jsd:beta=0.1",
    "fkl_clipped",
    "fkl_clipped:clip=0.01",
    "rkl_sampled",
    "rkl_baselined",
    "k1_loss",
    "k3_loss",
    "grpo_ref",
    "rkl_topk:k=5",
    "rkl_topk:k=5,support=union",
    "rkl_topk_unnorm:k=5",
    "fkl_topk:k=5",
]


def max_precision_error() -> dict:
    """The estimator's path (kernels.node_stats d at the candidates and |d|^2 as the estimator calls it, then
    estimate.stats.node_scores) against a 60-digit oracle on rows from flat to peaked (1 - p_top ~ 1e-12)."""
    import mpmath as mp

    mp.mp.dps = 60
    gen = torch.Generator().manual_seed(0)
    vocab, zs, zts = 300, [], []
    for gap in (2.0, 14.0, 22.0, 30.0):
        z = torch.randn(vocab, generator=gen)
        z[3] += gap
        zt = z + 0.3 * torch.randn(vocab, generator=gen)
        zt[7] += 3.0
        zs.append(z)
        zts.append(zt)
    z, zt = torch.stack(zs).float(), torch.stack(zts).float()
    tokens = torch.tensor([3, 7, 3, 11])
    adv = torch.tensor([0.5, -0.25, 0.75, -1.0])
    cand = torch.stack([torch.tensor([int(t)] + [c for c in (3, 7, 11, 20) if c != int(t)]) for t in tokens])
    q_c = torch.rand(cand.shape, generator=gen, dtype=torch.float64)
    objs = [objectives.parse(n) for n in PRECISION_OBJECTIVES]
    zeros = torch.zeros(cand.shape, dtype=torch.float64)
    teacher_objs = [o for o in objs if o.name != "grpo_ref"]
    st_t = kernels.node_stats(z, [zt], cand, zeros, teacher_objs, tokens=tokens, backend="chunked")
    st_n = kernels.node_stats(
        z, [z], cand, zeros, [objectives.parse("grpo_ref")], tokens=tokens, advantages=adv, backend="chunked"
    )
    worst, per = 0.0, {}
    mask = torch.ones(1, cand.shape[1], dtype=torch.bool)
    for obj in objs:
        if obj.name == "grpo_ref":
            st, o = st_n, 0
        else:
            st, o = st_t, teacher_objs.index(obj)
        err = 0.0
        for i in range(len(zs)):
            ids = [int(x) for x in cand[i]]
            ez = [mp.e ** mp.mpf(float(x)) for x in z[i].tolist()]
            sz = mp.fsum(ez)
            pm = [ez[k] / sz for k in ids]
            p_c = torch.tensor([float(x) for x in pm], dtype=torch.float64)[None]
            got = node_scores(
                p_c, q_c[i][None], torch.ones_like(q_c[i][None]), mask, st.d_cand[0, o, i][None],
                st.d_sq[0, o, i][None], n_boot=1,
            )
            d = _mp_direction(obj, z[i].tolist(), (z if obj.name == "grpo_ref" else zt)[i].tolist(),
                              int(tokens[i]), float(adv[i]), mp)
            qv = [mp.mpf(float(x)) for x in q_c[i]]
            v = mp.fsum(pm[k] * qv[k] for k in range(len(ids))) / mp.fsum(pm)
            gm = [pm[k] * (qv[k] - v) for k in range(len(ids))]
            dot = mp.fsum(gm[k] * d[ids[k]] for k in range(len(ids)))
            d_norm = mp.sqrt(mp.fsum(x * x for x in d))
            if d_norm == 0:
                continue
            cos = dot / mp.sqrt(mp.fsum(x * x for x in gm)) / d_norm
            err = max(err, abs(float(cos) - float(got.cos_full[0])))
            if DEBUG:
                print(obj.label, i, float(cos), float(got.cos_full[0]), float(dot), float(got.dot[0]))
        per[obj.label] = err
        worst = max(worst, err)
    one_minus = [float(1 - torch.softmax(z[i].double(), -1).max()) for i in range(len(zs))]
    return {"max_error": worst, "per_objective": per, "rows_1_minus_p_top": one_minus}


def main() -> None:
    t0 = time.time()
    out = {}
    sb = split_bias(100 if QUICK else 400)
    print("split bias", json.dumps(sb), flush=True)
    from estimator import adaptive_split_bias  # benchmarks/estimator.py
    from inclusion import inclusion_error  # benchmarks/inclusion.py

    ab = adaptive_split_bias(100 if QUICK else 400)
    print("adaptive split bias", json.dumps(ab), flush=True)
    inc = inclusion_error(100 if QUICK else 400)
    print("inclusion", json.dumps(inc), flush=True)
    prec = max_precision_error()
    print("precision", json.dumps(prec), flush=True)
    hn = headroom(RUNS, None)
    print("headroom null", json.dumps(hn), flush=True)
    hw = headroom(RUNS, 0.9)
    print("headroom winner", json.dumps(hw), flush=True)
    fc = false_clear_rate(RUNS)
    print("false clear", json.dumps(fc), flush=True)
    cov = coverage(RUNS)
    print("coverage", json.dumps(cov), flush=True)
    out = {
        "split_bias": {k: v["bias"] for k, v in sb.items()},
        "adaptive_split_bias": {k: ab[k] for k in ("correct", "incorrect")},
        "inclusion_error": inc["inclusion_error"],
        "false_clear_rate": fc["rate"],
        "coverage": cov["coverage"],
        "coverage_max": cov["coverage_max"],
        "coverage_two_stage": cov["coverage_two_stage"],
        "width_ratio_vs_two_stage": cov["width_ratio"],
        "headroom_null_coverage": hn["coverage"],
        "headroom_coverage": hw["coverage"],
        "max_precision_error": prec["max_error"],
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
